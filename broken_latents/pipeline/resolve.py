"""What a run is asked for -> what it trains and what it is checked against.

The CLI (`run TARGET`), the Python API (`bl.run(target)`), sweeps (`base = ...`) and
`reproduce` all name an experiment the same ways: a registered name, a TOML file or a config
object. `resolve_target` is the one place that turns any of them into the config, the claims the
runs must show and the cosine from which a latent counts as clean.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.metrics import CLEAN_COS
from ..config.schema import ConfigError, ExperimentConfig
from ..config.toml_io import load_toml
from ..config.overrides import apply_overrides
from ..experiments import EXPERIMENTS
from ..experiments.claims import Claim


@dataclass
class Target:
    """A resolved experiment: what to train and what to check."""

    config: ExperimentConfig
    """The config to train (a copy for a registered experiment: safe to change)."""
    claims: list[Claim] = field(default_factory=list)
    """The claims of the registered experiment named like `config` (none for an unregistered name)."""
    clean_cos: float = CLEAN_COS
    """Decoder cosine from which a latent counts as clean (the registered experiment's, else the default)."""
    experiment: str | None = None
    """The name of the registered experiment whose claims apply, or None."""


def resolve_target(
    target: str | Path | ExperimentConfig, overrides: tuple[str, ...] | list[str] = ()
) -> Target:
    """A registered name, a TOML path or a config, with `--set`-style "KEY=VALUE" overrides applied
    (see `budget`). The claims are those of the registered experiment the config is named after,
    so a TOML copied from a registered experiment keeps its claims."""
    if isinstance(target, ExperimentConfig):
        config = target
    elif isinstance(target, str) and target in EXPERIMENTS:
        config = copy.deepcopy(EXPERIMENTS[target].config)
    elif str(target).endswith(".toml") or Path(target).exists():
        config = load_toml(Path(target))
    else:
        raise ConfigError(
            "TARGET",
            f"{str(target)!r} is neither a registered experiment "
            f"({', '.join(EXPERIMENTS)}) nor a .toml file",
        )
    if overrides:
        config = apply_overrides(config, list(overrides))
    return claims_of(config)


def claims_of(config: ExperimentConfig) -> Target:
    """`config` with the claims and clean cosine of the registered experiment of its name, if any."""
    experiment = EXPERIMENTS.get(config.name)
    if experiment is None:
        return Target(config)
    return Target(config, experiment.claims, experiment.clean_cos, config.name)


def budget(seeds: int | None = None, samples: int | None = None) -> list[str]:
    """The `--seeds` and `--samples` flags as overrides (they come before any `--set`)."""
    return [
        f"train.{key}={value}"
        for key, value in (("seeds", seeds), ("samples", samples))
        if value is not None
    ]


def check_trainable(config: ExperimentConfig, device: str = "cpu", out: Path | None = None):
    """Everything that refuses a valid config before anything trains or is written, in one pass: a
    device this machine lacks, an engine that cannot train it there, sizes the machine cannot hold,
    a world too big to lay out, then (with `out`) a run directory that cannot be written, that the
    disk cannot hold, or that holds something other than an earlier run. A run on stored activations
    gets its rows back, opened, checked and split (`world.activations.StoredActivations`), so that
    the file is opened once; else None."""
    from ..output.rundir import check_out_dir
    from ..training.engines import choose_engine
    from ..training.on_activations import check_activations
    from ..training.preflight import check_config, check_outputs, check_writable

    check_device(device)
    choose_engine(config, device)
    stored = None
    if config.world.activations is not None:
        stored = check_activations(config)
    else:
        check_config(config, device)
    if out is not None:
        check_writable(out)
        check_outputs(config, out)
        check_out_dir(out)
    return stored


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda is not available on this machine; allowed here: cpu")
