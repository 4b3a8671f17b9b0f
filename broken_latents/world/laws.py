"""The laws of a large world: per-feature rates and magnitudes from their config forms, the
generated tree, the low-rank correlation and the input bias.

Where SAELens' `sae_lens.synthetic` defines a law, this follows it to the number (same float32
formulas, same torch generators and seed offsets: firing `seed`, magnitude stds `seed + 1`, mean
magnitudes `seed + 2`, tree `seed + 3`, correlation `seed + 4`, directions and bias `seed`), so a
world here and a SyntheticModel with the same laws and seed have the same rates, magnitudes,
hierarchy and correlation (the directions differ only by the decorrelation method).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config.laws import (  # noqa: F401  (the world reads the declared laws from here too)
    SPEC_FORMS,
    Node,
    base_rates,
    check_tree,
    features_of,
    generate_tree,
    magnitude_means,
    magnitude_stds,
    tree_size,
    zipf_rates,
)


# -- per-feature laws -----------------------------------------------------------------------


# -- the generated tree ---------------------------------------------------------------------


@dataclass
class Structure:
    """Every co-occurrence rule of a world as per-feature arrays, for the samplers.

    Gating (the tree, and explicit "conditional" relations): a feature with a parent keeps firing only
    while the parent is active (magnitude > 0), its magnitude times parent / parent mean where
    `rescale`; after gating at a depth, each mutually exclusive group there keeps one active member,
    drawn uniformly. Then explicit "force" relations, bottom-up: an active child switches its parent on."""

    parent_N: np.ndarray
    """Gating parent of each feature (-1: none)."""
    depth_N: np.ndarray
    """Gating depth (0: no parent); parents are always shallower than their children."""
    rescale_N: np.ndarray
    """Scale by the parent's magnitude over its mean."""
    group_N: np.ndarray
    """Mutually exclusive group of each feature (-1: none)."""
    groups: int
    force_parents_H: np.ndarray
    """Explicit "force" relations, top-down: parent of relation h ..."""
    force_offsets_H1: np.ndarray
    """... and its children force_children[offsets[h]:offsets[h + 1]]."""
    force_children: np.ndarray

    @property
    def gated(self) -> bool:
        return bool((self.parent_N >= 0).any())


def build_structure(n: int, roots: list[Node], relations: list) -> Structure:
    """The arrays of `Structure` from tree nodes and explicit relations (already in top-down order)."""
    parent = np.full(n, -1, np.int64)
    rescale = np.zeros(n, np.bool_)
    group = np.full(n, -1, np.int64)
    groups = 0

    def walk(node: Node, effective_parent: int) -> None:
        nonlocal groups
        members = [c.feature for c in node.children if c.feature is not None]
        if node.exclusive and len(members) >= 2:
            group[members] = groups
            groups += 1
        here = node.feature if node.feature is not None else effective_parent
        for child in node.children:
            if child.feature is not None and here >= 0:
                parent[child.feature] = here
                rescale[child.feature] = node.rescale
            walk(child, here)

    for root in roots:
        walk(root, -1)
    force = [rel for rel in relations if rel.mode == "force"]
    for rel in relations:
        if rel.mode == "conditional":
            parent[rel.children] = rel.parent
    depth = np.zeros(n, np.int64)
    for f in np.flatnonzero(parent >= 0):
        d, node = 0, f
        while parent[node] >= 0:
            node, d = parent[node], d + 1
        depth[f] = d
    return Structure(
        parent,
        depth,
        rescale,
        group,
        groups,
        np.array([rel.parent for rel in force], np.int64),
        np.cumsum([0] + [len(rel.children) for rel in force]).astype(np.int64),
        np.array([c for rel in force for c in rel.children], np.int64),
    )


def compensation(rates_N: np.ndarray, roots: list[Node]) -> np.ndarray:
    """SAELens' `compute_probability_correction_factors`: 1 / (parent's base rate) for a child, times
    1 + (its exclusive siblings' base rates summed) / (parent's base rate) in an exclusive group."""
    factor = np.ones_like(rates_N)

    def walk(node: Node, parent_rate: float) -> None:
        if node.feature is not None:
            if parent_rate > 0:
                factor[node.feature] = 1.0 / parent_rate
            rate = float(rates_N[node.feature])
        else:
            rate = parent_rate
        for child in node.children:
            walk(child, rate)
        members = [c.feature for c in node.children if c.feature is not None]
        if node.exclusive and len(members) >= 2 and rate > 0:
            total = sum(float(rates_N[f]) for f in members)
            for f in members:
                factor[f] *= 1.0 + max(0.0, total - float(rates_N[f])) / rate

    for root in roots:
        walk(root, 1.0)
    return factor


# -- correlation and bias -------------------------------------------------------------------


def low_rank_correlation(
    features: int, rank: int, scale: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """SAELens' `generate_random_low_rank_correlation_matrix`: factor L ~ scale N(0, 1) [features, rank]
    from generator seed + 4, rows with 1 - |L_i|^2 < 0.01 shrunk to |L_i|^2 = 0.99; diag = 1 - |L_i|^2."""
    gen = torch.Generator().manual_seed(seed + 4)
    factor = torch.randn(features, rank, generator=gen, dtype=torch.float32) * scale
    sq = (factor**2).sum(1)
    capped = 1 - sq < 0.01
    factor[capped] *= torch.sqrt((1 - 0.01) / sq[capped]).unsqueeze(1)
    return factor.numpy(), (1 - (factor**2).sum(1)).numpy()


def random_directions_and_bias(
    features: int, dim: int, bias: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens' FeatureDictionary start: unit rows of N(0, 1) [features, dim] from generator `seed`, then
    a bias of norm `bias` from the same generator (zeros when bias is 0)."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(features, dim, generator=gen)
    directions = directions / directions.norm(dim=1, keepdim=True).clamp(min=1e-8)
    if bias <= 0:
        return directions, torch.zeros(dim)
    b = torch.randn(dim, generator=gen)
    return directions, b / b.norm().clamp(min=1e-8) * bias


# -- world.load -----------------------------------------------------------------------------
