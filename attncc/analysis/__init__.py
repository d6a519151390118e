"""attncc.analysis."""
