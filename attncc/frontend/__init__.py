"""attncc.frontend."""
