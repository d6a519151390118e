"""attncc.plan."""
