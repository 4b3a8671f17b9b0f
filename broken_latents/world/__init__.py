"""A toy world: true feature directions, firing rates, magnitudes and hierarchy (model.py), its
seeded sample streams (stream.py) and the answers computed from it exactly (exact.py)."""
