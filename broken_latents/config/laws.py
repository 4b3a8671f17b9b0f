"""The laws a world's config declares, made concrete: per-feature rates and magnitudes from their
config forms (zipf, random, folded normal), the generated tree and the checks `WorldConfig`
runs on them, and what a SAELens folder (`world.load`) says of its size. The world (world/laws.py,
world/model.py) builds its sampler from these; the config validates with them before any run.

Where SAELens' `sae_lens.synthetic` defines a law, this follows it to the number (same float32
formulas, same torch generators and seed offsets: firing `seed`, magnitude stds `seed + 1`, mean
magnitudes `seed + 2`, tree `seed + 3`).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from typing import Any, Protocol

from .errors import ConfigError, require

CONFIG = "synthetic_model_config.json"
WEIGHTS = "synthetic_model.safetensors"
HIERARCHY = "hierarchy.json"


class DeclaredWorld(Protocol):
    """What the laws read of a [world] table: a `WorldConfig`, which checks itself with these
    laws while it is built (so this module names no class of the schema)."""

    features: int
    seed: int
    firing: Any
    magnitude: Any
    magnitude_std: Any
    tree: Any
    hierarchy: list


def read_config(path: str | Path) -> dict:
    """The folder's config; a missing or unreadable folder is a ConfigError naming world.load."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(
            "world.load",
            f"{path} is not a folder; give one written by SAELens' SyntheticModel.save()",
        )
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise ConfigError(
                "world.load", f"{path} has no {name}: not a folder written by SyntheticModel.save()"
            )
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError("world.load", f"{folder / CONFIG} is not valid JSON: {err}") from None
    for key in ("num_features", "hidden_dim"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise ConfigError(
                "world.load",
                f"{folder / CONFIG}: {key} must be a positive integer, got {cfg.get(key)!r}",
            )
    return cfg


def short_list(values: list) -> str:
    """A per-feature list for an error message: whole when short, else its first and last values."""
    values = list(values)
    return (
        str(values)
        if len(values) <= 20
        else f"[{', '.join(map(str, values[:5]))}, ..., {values[-1]}] ({len(values)} values)"
    )


def resolve_spec(spec: float | list | dict, n: int, field_name: str) -> list[float]:
    """Turn a number, list or {linear = [start, stop]} into n floats."""
    if isinstance(spec, bool):
        raise ConfigError(
            field_name, "must be a number, a list or {linear = [start, stop]}, got a boolean"
        )
    if isinstance(spec, (int, float)):
        return [float(spec)] * n
    if isinstance(spec, list):
        require(
            len(spec) == n, field_name, f"list needs one value per feature ({n}), got {len(spec)}"
        )
        require(
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec),
            field_name,
            "list values must be numbers",
        )
        return [float(v) for v in spec]
    if isinstance(spec, dict):
        require(
            set(spec) == {"linear"},
            field_name,
            f"table form is {{linear = [start, stop]}}, got keys {sorted(spec)}",
        )
        ends = spec["linear"]
        require(
            isinstance(ends, list)
            and len(ends) == 2
            and all(isinstance(v, (int, float)) for v in ends),
            field_name,
            "linear takes [start, stop]",
        )
        start, stop = float(ends[0]), float(ends[1])
        return [start + (stop - start) * i / max(n - 1, 1) for i in range(n)]
    raise ConfigError(
        field_name, f"must be a number, a list or {{linear = [start, stop]}}, got {spec!r}"
    )


SPEC_FORMS = "a number, a list (one per feature) or {linear = [start, stop]}"


def base_rates(world: DeclaredWorld) -> list[float]:
    """Each feature's firing law before any hierarchy compensation."""
    spec = world.firing
    if isinstance(spec, dict) and set(spec) == {"zipf"}:
        exponent, high, low = _table(spec["zipf"], "world.firing.zipf", ("exponent", "max", "min"))
        require(exponent > 0, "world.firing.zipf.exponent", f"must be > 0, got {exponent}")
        require(
            0 < low < high <= 1,
            "world.firing.zipf",
            f"needs 0 < min < max <= 1, got min {low}, max {high}",
        )
        return zipf_rates(world.features, exponent, high, low).tolist()
    if isinstance(spec, dict) and set(spec) == {"random"}:
        low, high = _table(spec["random"], "world.firing.random", ("min", "max"))
        require(
            0 < low < high <= 1,
            "world.firing.random",
            f"needs 0 < min < max <= 1, got min {low}, max {high}",
        )
        gen = torch.Generator().manual_seed(world.seed)
        return (
            low + (high - low) * torch.rand(world.features, generator=gen, dtype=torch.float32)
        ).tolist()
    return _plain(
        spec,
        world.features,
        "world.firing",
        "{zipf = {exponent, max, min}} or {random = {min, max}}",
    )


def zipf_rates(n: int, exponent: float, high: float, low: float) -> np.ndarray:
    """1 / rank^exponent rescaled to run from `high` (feature 0) down to `low` (SAELens, float32)."""
    if n == 1:
        return np.array([high])
    p = 1.0 / torch.arange(1, n + 1, dtype=torch.float32) ** exponent
    return (low + (high - low) * (p - p.min()) / (p.max() - p.min())).double().numpy()


def magnitude_means(world: DeclaredWorld) -> list[float]:
    return _plain(world.magnitude, world.features, "world.magnitude", None)


def magnitude_stds(world: DeclaredWorld) -> list[float]:
    """Each feature's magnitude std; {folded_normal = {mean, std}} draws them as |N(mean, std^2)|
    from generator seed + 1 (SAELens' FoldedNormalMagnitudeConfig)."""
    spec = world.magnitude_std
    if isinstance(spec, dict) and set(spec) == {"folded_normal"}:
        mean, std = _table(
            spec["folded_normal"], "world.magnitude_std.folded_normal", ("mean", "std")
        )
        require(std > 0, "world.magnitude_std.folded_normal.std", f"must be > 0, got {std}")
        gen = torch.Generator().manual_seed(world.seed + 1)
        return torch.abs(mean + torch.randn(world.features, generator=gen) * std).tolist()
    return _plain(spec, world.features, "world.magnitude_std", "{folded_normal = {mean, std}}")


def _plain(spec, n: int, field: str, more: str | None) -> list[float]:
    if isinstance(spec, dict) and set(spec) != {"linear"}:
        allowed = SPEC_FORMS + (f", or {more}" if more else "")
        raise ConfigError(field, f"must be {allowed}; got a table with keys {sorted(spec)}")
    return resolve_spec(spec, n, field)


def _table(table, field: str, keys: tuple[str, ...]) -> list[float]:
    require(
        isinstance(table, dict) and set(table) == set(keys),
        field,
        f"takes exactly the keys {', '.join(keys)}, got {sorted(table) if isinstance(table, dict) else table!r}",
    )
    for key in keys:
        value = table[key]
        require(
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value),
            f"{field}.{key}",
            f"must be a finite number, got {value!r}",
        )
    return [float(table[key]) for key in keys]


@dataclass
class Node:
    """One node of a hierarchy tree, as SAELens' HierarchyNode (organisational nodes: feature None)."""

    feature: int | None
    children: list[Node]
    exclusive: bool = False
    rescale: bool = False


def tree_size(tree) -> int:
    """Features one generated forest uses when the world has enough of them."""
    per_root = sum(tree.branching**d for d in range(tree.depth + 1))
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
    eligible = [
        node
        for node, d in parents
        if d >= tree.mutually_exclusive_min_depth and len(node.children) >= 2
    ]
    chosen = int(len(eligible) * tree.mutually_exclusive)
    if chosen > 0:
        for i in rng.sample(range(len(eligible)), chosen):
            eligible[i].exclusive = True
    if tree.scale_children_by_parent:
        for node, _ in parents:
            node.rescale = True
    return roots


def check_tree(world: DeclaredWorld) -> None:
    tree_features = {f for f in features_of(generate_tree(world.features, world.tree, world.seed))}
    for i, rel in enumerate(world.hierarchy):
        inside = tree_features.intersection([rel.parent, *rel.children])
        require(
            not inside,
            f"world.hierarchy.{i}",
            f"features {sorted(inside)[:5]} lie in [world.tree] (features 0..{max(tree_features)}); explicit "
            "relations must use features outside the generated trees",
        )


def features_of(roots: list[Node]):
    for node in roots:
        if node.feature is not None:
            yield node.feature
        yield from features_of(node.children)
