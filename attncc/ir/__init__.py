"""attncc.ir."""
