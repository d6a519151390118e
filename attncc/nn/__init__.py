"""attncc.nn."""
