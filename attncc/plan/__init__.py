"""attncc.plan: the cost model (cost.py), select, and the lowering registry (registry.py)."""
