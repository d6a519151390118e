"""attncc.runtime."""
