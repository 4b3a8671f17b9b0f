"""SAELens' synthetic-model folder (`SyntheticModel.save()`) as a world, and our worlds written in it.

The folder holds synthetic_model_config.json (the laws), synthetic_model.safetensors (feature_vectors
[F, D], bias [D], firing_probabilities [F] after compensation, and correlation_factor [F, rank] with
correlation_diag [F] when correlated) and hierarchy.json (the trees) when there is a hierarchy.
SAELens does not save the magnitudes: its loader regenerates them from the config with torch
generators seeded seed + 1 (stds) and seed + 2 (means), and so does `load_world`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config.schema import ConfigError, WorldConfig
from . import laws
from ..config.laws import CONFIG, HIERARCHY, WEIGHTS, read_config  # noqa: F401


@dataclass
class SavedWorld:
    """What a SAELens folder holds, as the parts a `World` is made of (`World.build` makes it)."""

    directions_ND: torch.Tensor
    rates_N: torch.Tensor
    magnitudes_N: torch.Tensor
    magnitude_stds_N: torch.Tensor | None
    """None: the folder's magnitudes are exact."""
    bias_D: torch.Tensor | None
    correlation: tuple[np.ndarray, np.ndarray] | None
    roots: list[laws.Node]
    """The folder's hierarchy trees ([] without hierarchy.json)."""


def read_saved_world(config: WorldConfig) -> SavedWorld:
    """The world a SAELens folder describes (sampling what SyntheticModel.sample draws)."""
    from safetensors.numpy import load_file

    folder = Path(config.load)
    cfg = read_config(folder)
    n, dim = cfg["num_features"], cfg["hidden_dim"]
    weights = load_file(folder / WEIGHTS)
    expect = {"feature_vectors": (n, dim), "bias": (dim,), "firing_probabilities": (n,)}
    for key, shape in expect.items():
        if key not in weights or tuple(weights[key].shape) != shape:
            got = tuple(weights[key].shape) if key in weights else "missing"
            raise ConfigError(
                "world.load", f"{folder / WEIGHTS}: {key} must have shape {shape}, got {got}"
            )
    seed = cfg.get("seed")
    means = _magnitudes(
        cfg.get("mean_firing_magnitudes", 1.0), n, None if seed is None else seed + 2, "mean"
    )
    stds = _magnitudes(
        cfg.get("std_firing_magnitudes", 0.0), n, None if seed is None else seed + 1, "std"
    )
    roots = []
    if (folder / HIERARCHY).is_file():
        roots = [_node(d) for d in json.loads((folder / HIERARCHY).read_text())["roots"]]
    correlation = None
    if "correlation_factor" in weights:
        correlation = (
            weights["correlation_factor"].astype(np.float32),
            weights["correlation_diag"].astype(np.float32),
        )
    bias = torch.from_numpy(weights["bias"].astype(np.float32))
    return SavedWorld(
        torch.from_numpy(weights["feature_vectors"].astype(np.float32)),
        torch.from_numpy(weights["firing_probabilities"].astype(np.float32)),
        means,
        stds if bool((stds > 0).any()) else None,
        bias if bool(bias.abs().sum() > 0) else None,
        correlation,
        roots,
    )


def _magnitudes(spec, n: int, seed: int | None, what: str) -> torch.Tensor:
    """SAELens' generate_magnitudes for its four built-in generators."""
    if isinstance(spec, (int, float)):
        return torch.full((n,), float(spec))
    name = spec.get("generator_name")
    if name == "constant":
        return torch.full((n,), float(spec["value"]))
    if name in ("linear", "exponential"):
        if n == 1:
            return torch.tensor([float(spec["start"])])
        if name == "linear":
            return torch.linspace(spec["start"], spec["end"], n)
        return spec["start"] * (spec["end"] / spec["start"]) ** torch.linspace(0, 1, n)
    if name == "folded_normal":
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        values = torch.abs(
            spec.get("mean", 0.0) + torch.randn(n, generator=gen) * spec.get("std", 0.1)
        )
        if spec.get("min_value") is not None or spec.get("max_value") is not None:
            values = torch.clamp(values, min=spec.get("min_value"), max=spec.get("max_value"))
        return values
    raise ConfigError(
        "world.load",
        f"{what}_firing_magnitudes: generator {name!r} is not one of SAELens' built-in "
        "constant, linear, exponential, folded_normal",
    )


def _node(d: dict) -> laws.Node:
    return laws.Node(
        d.get("feature_index"),
        [_node(c) for c in d.get("children", [])],
        bool(d.get("mutually_exclusive_children", False)),
        bool(d.get("scale_children_by_parent", False)),
    )


def _node_dict(node: laws.Node) -> dict:
    return {
        "feature_index": node.feature,
        "mutually_exclusive_children": node.exclusive,
        "scale_children_by_parent": node.rescale,
        "feature_id": None,
        "children": [_node_dict(c) for c in node.children],
    }


# -- export ---------------------------------------------------------------------------------


def export_world(world, path: str | Path) -> Path:
    """Write `world` as a SyntheticModel folder that SAELens' `SyntheticModel.load_from_disk` loads to
    the same distribution. SAELens regenerates magnitudes from its config, so the magnitude laws must be
    ones it has (a number, {linear}, {folded_normal}); explicit "force" relations have no SAELens form.
    Raises ValueError naming what cannot be written."""
    from safetensors.numpy import save_file

    c = world.config
    if c.load is not None:
        raise ValueError(f"this world was loaded from {c.load}: copy that folder instead")
    if any(rel.mode == "force" for rel in c.hierarchy):
        raise ValueError(
            "world.hierarchy: 'force' relations have no SAELens form (its children are gated by parents)"
        )
    cfg = {
        "num_features": c.features,
        "hidden_dim": c.dim,
        "firing_probability": _firing_cfg(c),
        "hierarchy": _tree_cfg(c.tree) if c.tree else None,
        "orthogonalization": None,
        "correlation": (
            {"rank": c.correlation.rank, "correlation_scale": c.correlation.scale, "seed": None}
            if c.correlation
            else None
        ),
        "std_firing_magnitudes": _magnitude_cfg(c.magnitude_std, "world.magnitude_std"),
        "mean_firing_magnitudes": _magnitude_cfg(c.magnitude, "world.magnitude"),
        "bias": float(c.bias) if c.bias > 0 else False,
        "dtype": "float32",
        "seed": c.seed,
    }
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2))
    weights = {
        "feature_vectors": world.directions_ND.cpu().float().numpy(),
        "bias": (
            np.zeros(c.dim, np.float32)
            if world.bias_D is None
            else world.bias_D.cpu().float().numpy()
        ),
        "firing_probabilities": world.rates_N.cpu().float().numpy(),
    }
    if world.correlation is not None:
        weights["correlation_factor"], weights["correlation_diag"] = world.correlation
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(folder / WEIGHTS))
    roots = list(world.tree_roots) + [
        laws.Node(rel.parent, [laws.Node(ch, []) for ch in rel.children])
        for rel in c.hierarchy
        if rel.mode == "conditional"
    ]
    if roots:
        (folder / HIERARCHY).write_text(
            json.dumps({"roots": [_node_dict(r) for r in roots]}, indent=2)
        )
    return folder


def _firing_cfg(c: WorldConfig) -> dict:
    """The firing law in SAELens' form. Without correlation the saved rates decide and any law goes
    (a placeholder constant stands in); with it SAELens derives its thresholds from the config's law."""
    spec = c.firing
    if isinstance(spec, dict) and "zipf" in spec:
        z = spec["zipf"]
        return {
            "generator_name": "zipfian",
            "exponent": z["exponent"],
            "max_prob": z["max"],
            "min_prob": z["min"],
        }
    if isinstance(spec, dict) and "random" in spec:
        return {
            "generator_name": "random",
            "max_prob": spec["random"]["max"],
            "min_prob": spec["random"]["min"],
        }
    if isinstance(spec, (int, float)):
        return {"generator_name": "constant", "probability": float(spec)}
    if isinstance(spec, dict) and "linear" in spec and spec["linear"][0] >= spec["linear"][1] > 0:
        return {
            "generator_name": "linear",
            "max_prob": spec["linear"][0],
            "min_prob": spec["linear"][1],
        }
    if c.correlation is not None:
        raise ValueError(
            "world.firing: with [world.correlation], SAELens needs a law it has (a number, zipf, "
            "random, or a decreasing linear); a list has none"
        )
    return {"generator_name": "constant", "probability": 0.1}


def _magnitude_cfg(spec, field: str):
    if isinstance(spec, (int, float)):
        return float(spec)
    if isinstance(spec, dict) and "folded_normal" in spec:
        f = spec["folded_normal"]
        return {
            "generator_name": "folded_normal",
            "mean": f["mean"],
            "std": f["std"],
            "min_value": None,
            "max_value": None,
        }
    if isinstance(spec, dict) and "linear" in spec and min(spec["linear"]) > 0:
        return {"generator_name": "linear", "start": spec["linear"][0], "end": spec["linear"][1]}
    raise ValueError(
        f"{field}: SAELens regenerates magnitudes from its config, which has no form for {spec!r} "
        "(use a number, {linear = [start, stop]} with both > 0, or {folded_normal})"
    )


def _tree_cfg(tree) -> dict:
    return {
        "total_root_nodes": tree.roots,
        "branching_factor": tree.branching,
        "max_depth": tree.depth,
        "mutually_exclusive_portion": tree.mutually_exclusive,
        "mutually_exclusive_min_depth": tree.mutually_exclusive_min_depth,
        "mutually_exclusive_max_depth": None,
        "compensate_probabilities": tree.compensate_probabilities,
        "scale_children_by_parent": tree.scale_children_by_parent,
    }
