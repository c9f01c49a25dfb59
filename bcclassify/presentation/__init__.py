"""Rows and data for the command line"s tables and the app"s pages (no Streamlit here)."""

__all__ = ["adapt", "classify", "confusion", "pages", "runs", "tables"]
