"""The schema of inspect.json as typed dataclasses (DESIGN.md's inspect contract), read and written
through analysis/metrics.py's schema machinery: `to_json` gives exactly the dict inspect.json holds
(keys in its order; `key` and a latent's `threshold` written as null when absent, as they always
were), `from_json` reads it back; keys a newer version wrote are kept in `extra`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..analysis.metrics import MixtureComponent, _Schema


@dataclass(kw_only=True)
class InspectLatent(_Schema):
    """One latent of the inspected SAE: its firing, its peak model, and the detector's verdict."""

    KEEP_NULL = ("threshold",)

    latent: int
    fires: float
    """Share of the inspected samples on which it fired (0: silent, scored 0)."""
    peaks: int
    """Separated peaks of its peak model (analysis/peaks.py)."""
    mixture: list[MixtureComponent]
    threshold: float | None = None
    """The peak model's threshold; null without one."""
    broken: bool
    """score >= the result's threshold_score."""
    score: float
    """The detector's probability of broken (analysis/score.py)."""
    signals: dict[str, float]
    """{signal: value} that fed the score (analysis/signals.py)."""
    peak_means: list[float]
    max: float
    """Largest activation seen."""
    floor: float
    """Activations at or below this were left out of the peak model's fit."""
    fitted: int
    """Activations the mixture was fitted to."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class InspectResult(_Schema):
    """All of inspect.json."""

    KEEP_NULL = ("architecture", "key")

    sae: str
    architecture: str | None = None
    d_in: int
    d_sae: int
    activations: str
    key: str | None = None
    """The array's key in an .npz / safetensors file; null for a .npy."""
    samples: int
    threshold_score: float
    rules: dict[str, Any]
    """What the detector did: peak floor, reservoir, signals, score and broken rules."""
    latents: list[InspectLatent]
    extra: dict[str, Any] = field(default_factory=dict)
