"""attncc.plan: the lowering registry (registry.py), the cost model's pieces (cost.py), selection
(select.py) and the torch backward texts (gradients.py)."""
