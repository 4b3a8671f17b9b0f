"""The sweep spec (a TOML file) and the grid of cells it declares.

```toml
base = "recap-absorption"        # a registered experiment or a path to a TOML
seeds = 10                       # optional: train.seeds of every cell
claims = ["tied-clean"]          # optional; default: every claim of the base
metrics = ["learned", "explained_variance"]  # optional: per-run scalars to map (mean over seeds per cell);
                                 # default: none, or DEFAULT_METRICS when the base has no claims
[set]                            # fixed overrides for every cell
"train.samples" = 5_000_000
[axes]                           # the grid is the product of these, in this order
"world.firing[0]" = [0.1, 0.2, 0.3, 0.4]
"world.firing[1]" = [0.02, 0.05, 0.1, 0.2]
```

A mistake in the spec itself (a key, a type, a [set] value, an axis that is not a non-empty list)
is a `ConfigError` naming the field. An axis value that makes one cell's config invalid fails
that cell only (recorded, the others run); if no cell at all is valid the spec is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import experiments
from ..config.schema import ConfigError, ExperimentConfig
from ..config.toml_io import dump_toml, to_dict
from ..config.overrides import apply_values
from ..pipeline.resolve import check_trainable, resolve_target
from ..analysis.metrics import CLEAN_COS, scalar_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPEC_KEYS = ("base", "seeds", "claims", "metrics", "set", "axes")
DEFAULT_METRICS = ["learned", "broken", "explained_variance"]
"""What a sweep over a base without claims maps when its spec names no metrics."""
NAME_LIMIT = 120
"""Longest cell directory name before it is shortened and given a hash."""


@dataclass
class SweepSpec:
    base: str
    """As written: a registered experiment name or a TOML path."""
    config: ExperimentConfig
    """The base with [set] and seeds applied: what every cell starts from."""
    experiment: str | None
    """The registered experiment whose claims the cells are checked against (None: no claims)."""
    claims: list[str]
    axes: dict[str, list]
    metrics: list[str] = field(default_factory=list)
    """Per-run scalars (analysis.metrics.run_scalar) mapped as their mean over seeds per cell and SAE."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The [set] table, flattened to dotted keys."""
    seeds: int = 1
    clean_cos: float = CLEAN_COS


@dataclass
class Cell:
    values: dict[str, Any]
    """Axis key -> this cell's value, in the axes' order."""
    name: str
    """Directory name under DIR/cells/ (filesystem-safe, unique in the grid)."""
    config: ExperimentConfig | None = None
    error: str | None = None
    """Why this cell's config is invalid (it is then not trained)."""


def load_spec(path: Path) -> SweepSpec:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("SPEC", f"no such file: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise ConfigError("SPEC", f"cannot read {path} as a sweep spec: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("SPEC", f"{path} is not valid TOML: {err}") from None
    return parse_spec(data, path.parent)


def parse_spec(data: dict, here: Path = Path(".")) -> SweepSpec:
    """Validate a spec's table; relative base paths are looked up next to the spec, then in the cwd."""
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(
            unknown[0], f"unknown key in the sweep spec; allowed: {', '.join(SPEC_KEYS)}"
        )
    if "base" not in data:
        raise ConfigError(
            "base", "is required: a registered experiment or a path to an experiment TOML"
        )
    base = data["base"]
    config, experiment, clean_cos = _resolve_base(base, here)

    seeds = data.get("seeds", config.train.seeds)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError("seeds", f"must be an integer >= 1, got {seeds!r}")

    known = [c.id for c in experiments.EXPERIMENTS[experiment].claims] if experiment else []
    claims = data.get("claims", known)
    if not isinstance(claims, list) or not all(isinstance(c, str) for c in claims):
        raise ConfigError("claims", f"must be a list of claim ids, got {claims!r}")
    for i, claim in enumerate(claims):
        if claim not in known:
            allowed = (
                ", ".join(known)
                if known
                else f"none ({base!r} is not a registered experiment with claims)"
            )
            raise ConfigError(
                f"claims[{i}]", f"unknown claim {claim!r}; the base's claims: {allowed}"
            )

    default_metrics = [] if known else DEFAULT_METRICS
    metrics = data.get("metrics", default_metrics)
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError("metrics", f"must be a list of per-run metric names, got {metrics!r}")
    for i, metric in enumerate(metrics):
        if metric not in scalar_names():
            raise ConfigError(
                f"metrics[{i}]", f"unknown metric {metric!r}; allowed: {', '.join(scalar_names())}"
            )

    table = data.get("set", {})
    if not isinstance(table, dict):
        raise ConfigError("set", f"must be a table of KEY = VALUE overrides, got {table!r}")
    settings = _flatten(table, to_dict(config))
    for key, value in settings.items():
        try:
            config = apply_values(config, [(key, value)])
        except ConfigError as err:
            raise ConfigError(f"set.{key}", _message(err)) from None
    config = apply_values(config, [("train.seeds", seeds)])

    axes_table = data.get("axes", {})
    if not isinstance(axes_table, dict):
        raise ConfigError("axes", f"must be a table of KEY = [values], got {axes_table!r}")
    axes = _flatten(axes_table, to_dict(config))
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"axes.{key}", f"must be a non-empty list of values, got {values!r}")
        if key in settings:
            raise ConfigError(f"axes.{key}", "is also in [set]; keep it in one of the two")
        _check_axis_key(config, key, values[0])
    return SweepSpec(
        base=base,
        config=config,
        experiment=experiment,
        claims=claims,
        axes=axes,
        metrics=metrics,
        settings=settings,
        seeds=seeds,
        clean_cos=clean_cos,
    )


def _check_axis_key(config: ExperimentConfig, key: str, value: Any) -> None:
    """A key the config does not have is a mistake in the spec, not in one cell: refuse it with the
    message `run --set` gives ("unknown key; allowed keys here: ...")."""
    try:
        apply_values(config, [(key, value)])
    except ConfigError as err:
        if "unknown key" in _message(err):
            raise ConfigError(f"axes.{key}", str(err)) from None


def _resolve_base(base: Any, here: Path) -> tuple[ExperimentConfig, str | None, float]:
    """`base` as `resolve_target` reads a target, a relative TOML path looked up next to the spec first."""
    if not isinstance(base, str) or not base:
        raise ConfigError("base", f"must be a registered experiment or a TOML path, got {base!r}")
    path = None
    if base not in experiments.EXPERIMENTS:
        candidates = [Path(base)] if Path(base).is_absolute() else [here / base, Path(base)]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            names = ", ".join(experiments.EXPERIMENTS)
            raise ConfigError(
                "base",
                f"{base!r} is neither a registered experiment ({names}) nor an existing .toml file",
            )
    try:
        target = resolve_target(path or base)
    except ConfigError as err:
        raise ConfigError(err.field, f"{_message(err)} (in base {path})") from None
    return target.config, target.experiment, target.clean_cos


def _message(err: ConfigError) -> str:
    return str(err).split(": ", 1)[1] if ": " in str(err) else str(err)


def _flatten(table: dict, config: dict, prefix: str = "") -> dict[str, Any]:
    """TOML reads an unquoted `train.samples = 5` as {"train": {"samples": 5}}: turn tables that stand
    for config sections (not values such as {linear = [...]}) back into dotted keys."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and _is_section(config, dotted):
            out.update(_flatten(value, config, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _is_section(config: dict, dotted: str) -> bool:
    """Whether `dotted` names a table of the config (world, train, sae, sae.LABEL, sae.LABEL.aux)."""
    node: Any = config
    for part in dotted.split("."):
        if isinstance(node, list):
            matches = [
                item for item in node if isinstance(item, dict) and item.get("label") == part
            ]
            if part.isdigit() and int(part) < len(node):
                matches = [node[int(part)]]
            if part == "*" and node:
                matches = [node[0]]
            if not matches:
                return False
            node = matches[0]
        elif isinstance(node, dict):
            if part not in node:
                return part == "aux"  # an SAE's aux table may be absent until set
            node = node[part]
        else:
            return False
    return isinstance(node, list) or (isinstance(node, dict) and set(node) != {"linear"})


# -- the grid ----------------------------------------------------------------------------------


def grid(spec: SweepSpec) -> list[Cell]:
    """Every combination of the axes' values (the first axis varies slowest), with its config or error."""
    keys = list(spec.axes)
    combos = list(itertools.product(*(spec.axes[k] for k in keys))) if keys else [()]
    cells = []
    for combo in combos:
        values = dict(zip(keys, combo))
        cell = Cell(values=values, name=cell_name(values))
        try:
            cell.config = apply_values(spec.config, list(values.items()))
            check_trainable(cell.config)
        except ConfigError as err:
            cell.config, cell.error = None, str(err)
        cells.append(cell)
    _make_unique(cells)
    return cells


def cell_name(values: dict[str, Any]) -> str:
    """`world.firing[0]=0.1, train.lr=0.001` -> `world.firing.0=0.1__train.lr=0.001`."""
    if not values:
        return "base"
    name = "__".join(f"{_safe(key)}={_safe(_format(value))}" for key, value in values.items())
    if len(name) > NAME_LIMIT:
        name = f"{name[:NAME_LIMIT]}-{_digest(values)}"
    return name


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _safe(text: str) -> str:
    text = re.sub(r"\[(\d+)\]", r".\1", text)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_.") or "_"


def _digest(values: dict) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _make_unique(cells: list[Cell]) -> None:
    """Values that differ only in characters a file name cannot hold get a hash each."""
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell.name] = counts.get(cell.name, 0) + 1
    for cell in cells:
        if counts[cell.name] > 1:
            cell.name = f"{cell.name}-{_digest(cell.values)}"


def label(values: dict[str, Any]) -> str:
    """How a cell is named in messages: `world.firing[0]=0.1 train.lr=0.001`."""
    return " ".join(f"{k}={_format(v)}" for k, v in values.items()) or "(the base)"


def cell_toml(config: ExperimentConfig) -> str:
    return dump_toml(config)
