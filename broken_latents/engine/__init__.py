"""The speed machinery: hand-derived gradients as array code (fastpath.py) and as one compiled
kernel (kernel.py), Adam over one flat buffer (optim.py), the sampling thread (stream.py), and
the few operations numpy and torch spell differently (backend.py)."""
