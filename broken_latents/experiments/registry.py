"""The experiments registry: an experiment is a config plus the claims its runs must show."""

from __future__ import annotations

from dataclasses import dataclass, field

from .claims import Claim
from ..config.schema import ExperimentConfig
from ..analysis.metrics import CLEAN_COS


@dataclass
class Experiment:
    config: ExperimentConfig
    claims: list[Claim] = field(default_factory=list)
    clean_cos: float = CLEAN_COS
    """Decoder cosine from which a latent counts as clean (superposition blurs, so it uses less)."""
    geometries: int = 1
    """World seeds (0, 1, ...) that `reproduce` checks the claims over. In superposition the
    directions' sign pattern changes what an SAE learns, so one draw of them proves little."""
    reproduced: bool = True
    """Whether `reproduce` runs it: the post's experiments, yes; the scale studies (synthbench.py: minutes to
    days each), no; run them by name."""


EXPERIMENTS: dict[str, Experiment] = {}
"""Registered experiments by name, in registration order."""


def register(experiment: Experiment) -> Experiment:
    """Add `experiment` under its config's name; a name registered twice raises."""
    name = experiment.config.name
    if name in EXPERIMENTS:
        raise ValueError(f"experiment {name!r} is registered twice")
    EXPERIMENTS[name] = experiment
    return experiment


def get(name: str) -> Experiment:
    return EXPERIMENTS[name]
