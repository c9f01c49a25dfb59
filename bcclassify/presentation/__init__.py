"""Rows and data for the command line"s tables and the app"s pages (no Streamlit here)."""

__all__ = ["pages", "tables"]
