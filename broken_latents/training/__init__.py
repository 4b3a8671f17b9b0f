"""The training loop (loop.py) and what it schedules: the aux loss (aux.py), the inverse
technique (inverse.py), peak refits (refit.py), termination and the preflight checks."""
