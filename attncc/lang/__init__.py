"""attncc.lang."""
