"""The one path from a resolved experiment to its result: train -> measure -> evaluate the claims
-> write the run directory. The CLI's `run`, the Python API, sweeps' cells, `reproduce` and the
studies all go through here; `output/` only writes what this hands it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..analysis.measure import Trained, latent_activations, measure
from ..analysis.metrics import Metrics
from ..analysis.on_activations import stored_latent_activations
from ..experiments.claims import evaluate_claims
from ..output.rundir import check_out_dir, write_run
from ..training.loop import TrainResult, train
from .resolve import Target

HISTOGRAM_SAMPLES = 50_000
"""Held-out samples per SAE drawn for the run directory's activation histograms."""


@dataclass
class RunOutcome:
    directory: Path
    metrics: Metrics


def measure_claims(result: Trained, target: Target) -> Metrics:
    """Typed metrics of a trained result, with the target's description and claims evaluated."""
    metrics = measure(result, clean_cos=target.clean_cos)
    metrics.description = result.config.description
    metrics.claims = evaluate_claims(target.claims, metrics)
    return metrics


def train_and_measure(
    target: Target, device: str = "cpu", progress: bool = False
) -> tuple[TrainResult, Metrics]:
    """Train every SAE of the target's config in memory, then measure it and check its claims."""
    if target.config.world.activations is not None:
        return _on_activations(target, device, progress)
    result = train(target.config, device=device, progress=progress)
    return result, measure_claims(result, target)


def _on_activations(target: Target, device: str, progress: bool):
    """SAEs on a stored activations file: the truth (labels, directions) is read and probed first, so a
    bad labels file stops the run before it trains."""
    from ..analysis.on_activations import measure_on_activations, truth_from_config
    from ..language.cache import ensure_built
    from ..training.on_activations import check_activations, train_on_activations

    config = target.config
    ensure_built(config.world, progress=progress)
    source = check_activations(config)
    truth = truth_from_config(config.world, source, source.split(config.world.held_out)[0])
    result = train_on_activations(config, device=device, progress=progress, source=source)
    metrics = measure_on_activations(result, truth, clean_cos=target.clean_cos)
    metrics.description = config.description
    metrics.claims = evaluate_claims(target.claims, metrics)
    return result, metrics


def run_experiment(
    target: Target,
    out: Path,
    device: str = "cpu",
    progress: bool = True,
    figures: Literal["first", "all", "none"] = "first",
) -> RunOutcome:
    """Train, measure, check the claims and write DIR (atomically, see `output.rundir.write_run`).
    A DIR that holds something other than an earlier run is refused before anything trains."""
    out = Path(out)
    check_out_dir(out)
    started = time.perf_counter()
    result, metrics = train_and_measure(target, device=device, progress=progress)
    activations = None
    if figures != "none":
        activations = (
            stored_latent_activations(result, HISTOGRAM_SAMPLES)
            if target.config.world.activations
            else latent_activations(result, HISTOGRAM_SAMPLES)
        )
    write_run(out, target.config, result, metrics, started, figures, activations)
    return RunOutcome(out, metrics)
