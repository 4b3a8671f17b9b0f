"""The laws of a large world: per-feature rates and magnitudes from their config forms, the
generated tree, the low-rank correlation and the input bias.

Where SAELens' `sae_lens.synthetic` defines a law, this follows it to the number (same float32
formulas, same torch generators and seed offsets: firing `seed`, magnitude stds `seed + 1`, mean
magnitudes `seed + 2`, tree `seed + 3`, correlation `seed + 4`, directions and bias `seed`), so a
world here and a SyntheticModel with the same laws and seed have the same rates, magnitudes,
hierarchy and correlation (the directions differ only by the decorrelation method).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields

import numpy as np
import torch

from ..config.schema import ConfigError, WorldConfig, resolve_spec

SPEC_FORMS = "a number, a list (one per feature) or {linear = [start, stop]}"


# -- per-feature laws -----------------------------------------------------------------------

def base_rates(world: WorldConfig) -> list[float]:
    """Each feature's firing law before any hierarchy compensation."""
    spec = world.firing
    if isinstance(spec, dict) and set(spec) == {"zipf"}:
        exponent, high, low = _table(spec["zipf"], "world.firing.zipf", ("exponent", "max", "min"))
        _check(exponent > 0, "world.firing.zipf.exponent", f"must be > 0, got {exponent}")
        _check(0 < low < high <= 1, "world.firing.zipf", f"needs 0 < min < max <= 1, got min {low}, max {high}")
        return zipf_rates(world.features, exponent, high, low).tolist()
    if isinstance(spec, dict) and set(spec) == {"random"}:
        low, high = _table(spec["random"], "world.firing.random", ("min", "max"))
        _check(0 < low < high <= 1, "world.firing.random", f"needs 0 < min < max <= 1, got min {low}, max {high}")
        gen = torch.Generator().manual_seed(world.seed)
        return (low + (high - low) * torch.rand(world.features, generator=gen, dtype=torch.float32)).tolist()
    return _plain(spec, world.features, "world.firing", "{zipf = {exponent, max, min}} or {random = {min, max}}")


def zipf_rates(n: int, exponent: float, high: float, low: float) -> np.ndarray:
    """1 / rank^exponent rescaled to run from `high` (feature 0) down to `low` (SAELens, float32)."""
    if n == 1:
        return np.array([high])
    p = 1.0 / torch.arange(1, n + 1, dtype=torch.float32) ** exponent
    return (low + (high - low) * (p - p.min()) / (p.max() - p.min())).double().numpy()


def magnitude_means(world: WorldConfig) -> list[float]:
    return _plain(world.magnitude, world.features, "world.magnitude", None)


def magnitude_stds(world: WorldConfig) -> list[float]:
    """Each feature's magnitude std; {folded_normal = {mean, std}} draws them as |N(mean, std^2)|
    from generator seed + 1 (SAELens' FoldedNormalMagnitudeConfig)."""
    spec = world.magnitude_std
    if isinstance(spec, dict) and set(spec) == {"folded_normal"}:
        mean, std = _table(spec["folded_normal"], "world.magnitude_std.folded_normal", ("mean", "std"))
        _check(std > 0, "world.magnitude_std.folded_normal.std", f"must be > 0, got {std}")
        gen = torch.Generator().manual_seed(world.seed + 1)
        return torch.abs(mean + torch.randn(world.features, generator=gen) * std).tolist()
    return _plain(spec, world.features, "world.magnitude_std", "{folded_normal = {mean, std}}")


def _plain(spec, n: int, field: str, more: str | None) -> list[float]:
    if isinstance(spec, dict) and set(spec) != {"linear"}:
        allowed = SPEC_FORMS + (f", or {more}" if more else "")
        raise ConfigError(field, f"must be {allowed}; got a table with keys {sorted(spec)}")
    return resolve_spec(spec, n, field)


def _table(table, field: str, keys: tuple[str, ...]) -> list[float]:
    _check(isinstance(table, dict) and set(table) == set(keys), field,
           f"takes exactly the keys {', '.join(keys)}, got {sorted(table) if isinstance(table, dict) else table!r}")
    for key in keys:
        value = table[key]
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
               f"{field}.{key}", f"must be a finite number, got {value!r}")
    return [float(table[key]) for key in keys]


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)


# -- the generated tree ---------------------------------------------------------------------

@dataclass
class Node:
    """One node of a hierarchy tree, as SAELens' HierarchyNode (organisational nodes: feature None)."""

    feature: int | None
    children: list[Node]
    exclusive: bool = False
    rescale: bool = False


def tree_size(tree) -> int:
    """Features one generated forest uses when the world has enough of them."""
    per_root = sum(tree.branching ** d for d in range(tree.depth + 1))
    return tree.roots * per_root


def generate_tree(features: int, tree, seed: int) -> list[Node]:
    """SAELens' `generate_hierarchy`: roots 0 .. roots - 1, then breadth-first, `branching` children per
    node until `depth`; a share of the eligible parents (depth >= min depth, >= 2 children) drawn with
    python's random.Random(seed + 3) gets mutually exclusive children."""
    rng = random.Random(seed + 3)
    counter = iter(range(features))
    roots = [Node(f, []) for _, f in zip(range(tree.roots), counter)]
    parents = [(r, 0) for r in roots]
    level = list(parents)
    while level:
        nxt = []
        for node, d in level:
            if d >= tree.depth:
                continue
            for _, f in zip(range(tree.branching), counter):
                child = Node(f, [])
                node.children.append(child)
                if d + 1 < tree.depth:
                    nxt.append((child, d + 1))
                    parents.append((child, d + 1))
        level = nxt
    eligible = [node for node, d in parents if d >= tree.mutually_exclusive_min_depth and len(node.children) >= 2]
    chosen = int(len(eligible) * tree.mutually_exclusive)
    if chosen > 0:
        for i in rng.sample(range(len(eligible)), chosen):
            eligible[i].exclusive = True
    if tree.scale_children_by_parent:
        for node, _ in parents:
            node.rescale = True
    return roots


def check_tree(world: WorldConfig) -> None:
    tree_features = {f for f in features_of(generate_tree(world.features, world.tree, world.seed))}
    for i, rel in enumerate(world.hierarchy):
        inside = tree_features.intersection([rel.parent, *rel.children])
        _check(not inside, f"world.hierarchy.{i}",
               f"features {sorted(inside)[:5]} lie in [world.tree] (features 0..{max(tree_features)}); explicit "
               "relations must use features outside the generated trees")


def features_of(roots: list[Node]):
    for node in roots:
        if node.feature is not None:
            yield node.feature
        yield from features_of(node.children)


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
    return Structure(parent, depth, rescale, group, groups,
                     np.array([rel.parent for rel in force], np.int64),
                     np.cumsum([0] + [len(rel.children) for rel in force]).astype(np.int64),
                     np.array([c for rel in force for c in rel.children], np.int64))


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

def low_rank_correlation(features: int, rank: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SAELens' `generate_random_low_rank_correlation_matrix`: factor L ~ scale N(0, 1) [features, rank]
    from generator seed + 4, rows with 1 - |L_i|^2 < 0.01 shrunk to |L_i|^2 = 0.99; diag = 1 - |L_i|^2."""
    gen = torch.Generator().manual_seed(seed + 4)
    factor = torch.randn(features, rank, generator=gen, dtype=torch.float32) * scale
    sq = (factor ** 2).sum(1)
    capped = 1 - sq < 0.01
    factor[capped] *= torch.sqrt((1 - 0.01) / sq[capped]).unsqueeze(1)
    return factor.numpy(), (1 - (factor ** 2).sum(1)).numpy()


def random_directions_and_bias(features: int, dim: int, bias: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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

def check_load(world: WorldConfig) -> None:
    """With `load`, only features and dim may be set (they must equal the folder's), the rest stays default."""
    from .saelens import read_config  # the folder's config names its size

    saved = read_config(world.load)
    defaults = WorldConfig.__dataclass_fields__
    for f in fields(WorldConfig):
        if f.name in ("load", "features", "dim"):
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default
        _check(getattr(world, f.name) == default, f"world.{f.name}",
               f"cannot be set with world.load (the world comes whole from {world.load}); remove it or world.load")
    for name, key in (("features", "num_features"), ("dim", "hidden_dim")):
        value = getattr(world, name)
        if value != defaults[name].default:
            _check(value == saved[key], f"world.{name}",
                   f"is {saved[key]} in {world.load}; remove world.{name} or set it to {saved[key]}, got {value}")
    world.features, world.dim = int(saved["num_features"]), int(saved["hidden_dim"])
