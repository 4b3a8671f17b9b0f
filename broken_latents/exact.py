"""Exact answers for small worlds: the firing distribution by enumeration, and the SAE that
minimises the *expected* loss over it (no sampling noise, no stochastic optimiser).

With a handful of features there are at most 2^N firing patterns, so the expected loss is a
finite weighted sum; L-BFGS on it gives the optimum a perfect trainer would reach from a
given start. Training results can be checked against it.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .config import SAEConfig
from .saes import build_sae, weighted_sum
from .world import World

MAX_FEATURES = 14


def firing_distribution(world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """(patterns f_PN with magnitudes, probabilities p_P) of every firing pattern that can occur."""
    n = world.n_features
    if n > MAX_FEATURES:
        raise ValueError(f"exact enumeration needs <= {MAX_FEATURES} features, the world has {n}")
    raw = np.array(list(itertools.product([False, True], repeat=n)), dtype=bool).T  # [N, 2^N]
    rates = world.rates_N.double().cpu().numpy()[:, None]
    prob = np.where(raw, rates, 1 - rates).prod(axis=0)
    fired = world.apply_hierarchy(raw.copy())
    merged: dict[bytes, float] = {}
    for column, p in zip(fired.T, prob):
        merged[column.tobytes()] = merged.get(column.tobytes(), 0.0) + p
    patterns = np.array([np.frombuffer(k, dtype=bool) for k in merged], dtype=np.float64)
    magnitudes = world.magnitudes_N.double().cpu().numpy()
    return torch.tensor(patterns * magnitudes), torch.tensor(list(merged.values()))


def covariance(world: World) -> torch.Tensor:
    """Cov[f] in feature coordinates. For orthonormal features, a one-latent SAE whose ReLU never
    clips and whose bias is free keeps the top eigenvector of this (the first principal component):
    the analytic answer for the single-latent experiment."""
    f, p = firing_distribution(world)
    mean = p @ f
    return (f.T * p) @ f - torch.outer(mean, mean)


def expected_loss_optimum(world: World, config: SAEConfig, seed: int = 0, steps: int = 500) -> torch.nn.Module:
    """The SAE of `config` minimising the expectation of its declared loss terms over the exact distribution."""
    f, p = firing_distribution(world)
    x = (f @ world.directions_ND.double().cpu())[None]  # [1, P, D]
    sae = build_sae(config, 1, world.config.dim, [seed], "random").double()
    optimiser = torch.optim.LBFGS(sae.parameters(), max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        terms, _ = sae.loss_terms(x)
        loss = (weighted_sum(terms) * p).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return sae
