"""The one path from a resolved experiment to its result: train -> measure -> evaluate the claims
-> write the run directory. The CLI's `run`, the Python API, sweeps' cells, `reproduce` and the
studies all go through here; `output/` only writes what this hands it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..analysis.measure import latent_activations
from ..analysis.metrics import Metrics
from ..analysis.on_activations import stored_latent_activations
from ..experiments.claims import measure_claims
from ..output.rundir import write_run
from ..training.loop import TrainResult
from ..training.on_activations import train_run
from .resolve import Target, check_trainable

HISTOGRAM_SAMPLES = 50_000
"""Held-out samples per SAE drawn for the run directory's activation histograms."""


@dataclass
class RunOutcome:
    directory: Path
    metrics: Metrics


def train_and_measure(
    target: Target, device: str = "cpu", progress: bool = False
) -> tuple[TrainResult, Metrics]:
    """Check the target's config, train every SAE in memory, then measure it and check its claims."""
    result = train_run(target.config, device, progress, check_trainable(target.config, device))
    return result, measure_claims(result, target.claims, target.clean_cos)


def run_experiment(
    target: Target,
    out: Path,
    device: str = "cpu",
    progress: bool = True,
    figures: Literal["first", "all", "none"] = "first",
) -> RunOutcome:
    """Check, train, measure, check the claims and write DIR (atomically, see `output.rundir.write_run`).
    Whatever can be refused is refused before anything trains, in one pass (`check_trainable`): the
    config, an `out` that cannot be written or that the disk cannot hold, a DIR that holds something
    other than an earlier run."""
    out = Path(out)
    stored = check_trainable(target.config, device, out)
    started = time.perf_counter()
    result = train_run(target.config, device, progress, stored)
    metrics = measure_claims(result, target.claims, target.clean_cos)
    activations = None
    if figures != "none":
        activations = (
            stored_latent_activations(result, HISTOGRAM_SAMPLES)
            if target.config.world.activations
            else latent_activations(result, HISTOGRAM_SAMPLES)
        )
    write_run(out, target.config, result, metrics, started, figures, activations)
    return RunOutcome(out, metrics)
