"""The few operations numpy and torch spell differently, so the fast path runs on either.

On a GPU the fast path runs on torch tensors. On the CPU training uses the compiled kernel
(kernel.py) on numpy views of the same parameters; the array path on numpy stays as a second
implementation that tests compare against (numpy's per-call overhead is a few times lower
than torch's for these small arrays, which made it the CPU engine before the kernel)."""

from __future__ import annotations

import numpy as np
import torch

Array = "np.ndarray | torch.Tensor"


def is_numpy(a) -> bool:
    return isinstance(a, np.ndarray)


def xp(a):
    """The array module of `a`: numpy or torch."""
    return np if is_numpy(a) else torch


def amax(a, axis: int):
    return a.max(axis=axis) if is_numpy(a) else a.amax(dim=axis)


def clamp_min(a, low: float):
    return np.maximum(a, low) if is_numpy(a) else a.clamp_min(low)


def norm_last(a):
    """Euclidean norm over the last axis."""
    return xp(a).sqrt((a * a).sum(-1))


def T(a):
    """Swap the last two axes."""
    return a.swapaxes(-1, -2)


def zeros_like(a):
    return np.zeros_like(a) if is_numpy(a) else torch.zeros_like(a)


def concat_flat(arrays: list):
    if is_numpy(arrays[0]):
        return np.concatenate([a.reshape(-1) for a in arrays])
    return torch.cat([a.reshape(-1) for a in arrays])


def as_torch(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)) if is_numpy(a) else a
