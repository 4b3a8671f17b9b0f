"""Directions for many features in few dimensions, at a cost that fits a laptop.

The max-|cos| search of `model._spread_directions` costs steps x features^2 x dim and its steps do
not shrink below 50; past SEARCH_BUDGET (4096 features in 256 dims is 10x over) the world takes
random unit vectors (SAELens' start, from the same generator) and a few steps that push apart the
most aligned pairs: gradient steps on sum_ij cos_ij^8, which weighs a pair by its |cos|^7, so the
tail of large cosines moves and the bulk (already near the random 1/sqrt(dim)) stays.

Measured on this 2-core machine under load ~12 (one thread; SAELens' SynthSAEBench-16k orthogonalisation,
100 Adam steps at lr 3e-4 from the same random start, in the same window):

| size | random start (mean, max |cos|) | ours | SAELens' | Welch bound |
|---|---|---|---|---|
| 2048 x 256 | 0.0499, 0.300 | 0.0507, 0.112 in 4.2 s (10 steps) | 0.0467, 0.277 in 139 s | 0.058 |
| 4096 x 256 | 0.0499, 0.323 | 0.0498, 0.152 in 11.3 s (4 steps) | 0.0483, 0.319 in 385 s | 0.061 |
| 16384 x 768 | 0.0288, 0.199 | 0.0287, 0.104 in 16.8 CPU-s (2 steps) | not run (about 19 min to build) | 0.035 |

SAELens' loss (sum cos^2) lowers the mean; ours (sum cos^8) the worst pairs, which is what makes a
latent's neighbours interfere.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SEARCH_BUDGET = 6e8
"""Work (steps x features^2 x (1 + dim/200)) up to which the max-|cos| search runs: about 15-20 s on
one 2020s core (measured: 2000 features in 10 dims, 2.1e8, 6 s; 2000 in 500 dims, 7e8, 19 s)."""

DECORRELATION_WORK = 2e10
"""features^2 x dim x steps the decorrelation may spend (about 20 s on one core); 2 to 10 steps."""

CHUNK = 2048
"""Rows of the cosine matrix held at once: memory stays CHUNK x features whatever the size."""


def search_work(features: int, dim: int) -> float:
    """The max-|cos| search's work: steps x features^2 x (1 + dim/200); 0 where no search runs."""
    if dim >= features or features == dim + 1:
        return 0.0
    steps = int(np.clip(1e9 / (features * features * dim), 50, 800))
    return steps * features * features * (1 + dim / 200)


def decorrelation_steps(features: int, dim: int) -> int:
    return int(np.clip(DECORRELATION_WORK / (features * features * dim), 2, 10))


def decorrelation_seconds(features: int, dim: int) -> float:
    """Time the decorrelation takes on one core, roughly (measured 1.1 s per step at 4096 x 256, one busy core)."""
    return decorrelation_steps(features, dim) * features * features * dim / 4e9


def decorrelate(V_ND: torch.Tensor, steps: int, lr: float = 0.1) -> torch.Tensor:
    """`steps` normalised gradient steps on sum_{i != j} cos_ij^8 along the sphere, lr falling linearly."""
    V = V_ND / V_ND.norm(dim=1, keepdim=True)
    n = V.shape[0]
    for t in range(steps):
        grad = torch.empty_like(V)
        for i in range(0, n, CHUNK):
            C = V[i : i + CHUNK] @ V.T
            rows = torch.arange(C.shape[0])
            C[rows, rows + i] = 0.0
            C2 = C * C
            grad[i : i + CHUNK] = (C * C2 * C2 * C2) @ V  # cos^7: odd, so the sign stays
        grad -= (grad * V).sum(1, keepdim=True) * V
        grad /= grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
        V = V - lr * (1 - t / steps) * grad
        V = V / V.norm(dim=1, keepdim=True)
    return V


def cosine_stats(V_ND: torch.Tensor) -> tuple[float, float]:
    """(mean, max) |cos| over distinct pairs, chunked."""
    V = V_ND.double()
    n, total, worst = V.shape[0], 0.0, 0.0
    for i in range(0, n, CHUNK):
        C = (V[i : i + CHUNK] @ V.T).abs()
        rows = torch.arange(C.shape[0])
        C[rows, rows + i] = 0.0
        total, worst = total + float(C.sum()), max(worst, float(C.max()))
    return total / max(n * (n - 1), 1), worst


def welch(features: int, dim: int) -> float:
    return 0.0 if features <= dim else math.sqrt((features - dim) / (dim * (features - 1)))
