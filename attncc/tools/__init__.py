"""attncc.tools."""
