"""Exact answers for small worlds: the firing distribution by enumeration, and the SAE that
minimises the *expected* loss over it (no sampling noise, no stochastic optimiser).

With a handful of features there are at most 2^N firing patterns, so the expected loss is a
finite weighted sum; L-BFGS on it gives the optimum a perfect trainer would reach from a
given start. Training results can be checked against it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ..config.schema import SAEConfig
from ..saes import build_sae, weighted_sum
from .model import World

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


def expected_loss_optimum(
    world: World,
    config: SAEConfig,
    seed: int = 0,
    steps: int = 500,
    start_KN: torch.Tensor | None = None,
) -> torch.nn.Module:
    """The SAE of `config` minimising the expectation of its declared loss terms over the exact
    distribution: from a random start, or from decoder rows `start_KN` given in feature coordinates
    (row k = latent k's components along the true features)."""
    f, p = firing_distribution(world)
    x = (f @ world.directions_ND.double().cpu())[None]  # [1, P, D]
    sae = build_sae(config, 1, world.config.dim, [seed], "random").double()
    if start_KN is not None:
        with torch.no_grad():
            sae.W_dec_SKD[0] = start_KN.double() @ world.directions_ND.double().cpu()
            if hasattr(sae, "W_enc_SDK"):
                sae.W_enc_SDK[0] = sae.W_dec_SKD[0].T
    optimiser = torch.optim.LBFGS(
        sae.parameters(),
        max_iter=steps,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimiser.zero_grad()
        terms, _ = sae.loss_terms(x)
        loss = (weighted_sum(terms) * p).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return sae


def expected_loss(world: World, sae: torch.nn.Module) -> float:
    """The expectation of `sae`'s declared loss over the exact firing distribution."""
    f, p = firing_distribution(world)
    x = (f @ world.directions_ND.double().cpu())[None]
    with torch.no_grad():
        terms, _ = sae.loss_terms(x)
        return float((weighted_sum(terms) * p).sum())


# -- where tied SAEs stop solving absorption (the recap world) ---------------------------------
#
# Parent f0 fires on its own at rate p0, child f1 at rate p1 and switches the parent on (force):
# the inputs in span(f0, f1) are f0 alone, P = p0 (1 - p1), and f0 + f1, P = p1. A tied ReLU SAE
# with two orthonormal latents at angle theta from f0 (u = cos t f0 + sin t f1, v = sin t f0 - cos t f1)
# reconstructs both inputs exactly for every theta in [pi/4, pi/2]: both lie in the cone where
# neither latent clips. The loss there is the L1 alone, l1 times
#     E|h|_1 (theta) = p0 (1 - p1) (cos t + sin t) + 2 p1 sin t,
# concave in theta on that interval, so its only minima are the ends: theta = pi/2, the true basis
# (f1 and f0), with E|h|_1 = p0 (1 - p1) + 2 p1, and theta = pi/4, the 45-degree pair (f0 +- f1)/sqrt 2,
# with sqrt 2 (p0 (1 - p1) + p1). The true basis is the global optimum exactly when
#     p0 (1 - p1) > sqrt 2 p1,   i.e.   p0 > sqrt 2 p1 / (1 - p1).
# This is exact at first order in l1: the shrinkage both pay for the L1 costs O(l1^2) more, which
# `expected_loss_optimum` includes and the tests compare against.


def basis_and_pair_l1(parent_rate: float, child_rate: float) -> tuple[float, float]:
    """Expected L1 (per input, before the coefficient) of the exact reconstructions of span(f0, f1)
    by the true basis and by the 45-degree pair, in the recap world."""
    alone, both = parent_rate * (1 - child_rate), child_rate
    return alone + 2 * both, math.sqrt(2) * (alone + both)


def tied_absorption_boundary(child_rate: float) -> float:
    """The parent's own rate above which the true basis, not the 45-degree pair, minimises a tied
    SAE's loss in the recap world (first order in l1): sqrt 2 p1 / (1 - p1)."""
    return math.sqrt(2) * child_rate / (1 - child_rate)
