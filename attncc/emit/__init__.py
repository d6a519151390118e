"""Code emission: readable, deterministic Python (torch) and Triton source from a Plan."""
