"""Who may do what: local reviewer accounts and the roles table."""

__all__ = ["accounts", "roles"]
