"""Planning: the lowering registry (registry.py) and the cost model's pieces (cost.py)."""
