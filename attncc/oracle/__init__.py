"""attncc.oracle: the dense float64 reference, the meaning of every spec."""
