"""Typed metrics built by hand for tests: each field a test leaves out takes the plainest value of
its shape, so a test names only the fields it is about."""

from __future__ import annotations

import numpy as np

from broken_latents.analysis.metrics import ClaimResult, Match, Metrics, RunMetrics, WorldMetrics


def run_metrics(decoder_cos: list[list[float]] = ((1.0,),), **fields) -> RunMetrics:
    """One SAE and seed ("tied", seed 0) with len(decoder_cos) latents, none matched, none dead."""
    decoder_cos = [list(row) for row in decoder_cos]
    latents = len(decoder_cos)
    plain = dict(
        label="tied",
        seed=0,
        decoder_cos=decoder_cos,
        encoder_cos=decoder_cos,
        latent_cos=np.eye(latents).tolist(),
        decoder_norms=[1.0] * latents,
        matches=[],
        learned_features=[],
        broken_latents=[],
        dead_latents=[],
        activation_peaks=[1] * latents,
        mse=0.0,
        l0=0.0,
        explained_variance=1.0,
    )
    return RunMetrics(**{**plain, **fields})


def matches(*triples: tuple[int, int, float]) -> list[Match]:
    """(latent, feature, cos) triples as matches."""
    return [Match(latent=latent, feature=feature, cos=cos) for latent, feature, cos in triples]


def world_metrics(features: int = 1, **fields) -> WorldMetrics:
    """`features` orthogonal features, each firing with probability 0.5 at magnitude 1."""
    plain = dict(
        expected_mse=[0.5] * features,
        feature_cos=np.eye(features).tolist(),
        firing_rates=[0.5] * features,
    )
    return WorldMetrics(**{**plain, **fields})


def claim_result(**fields) -> ClaimResult:
    """A claim held in its one seed."""
    plain = dict(
        id="claim",
        text="text",
        holds=True,
        seeds_held=1,
        seeds_run=1,
        per_seed=[True],
        detail="detail",
    )
    return ClaimResult(**{**plain, **fields})


def metrics(runs: list[RunMetrics] | None = None, **fields) -> Metrics:
    """A run named "test" of the given runs (default: one plain run) in a one-feature world."""
    plain = dict(
        name="test",
        samples=0,
        samples_per_second=0.0,
        world=world_metrics(),
        runs=[run_metrics()] if runs is None else runs,
    )
    return Metrics(**{**plain, **fields})


NEWER_WORLD_KEYS = (
    "magnitudes",
    "variance",
    "variance_ranking",
    "max_feature_cos",
    "welch_bound",
    "dim",
    "given_rates",
    "hierarchy",
)
NEWER_RUN_KEYS = (
    "absorption",
    "full_absorption",
    "hedging",
    "width_explained_variance",
    "peak_models",
    "histogram_peaks",
    "loss_drop",
    "falling_term",
    "still_falling",
)
"""Keys metrics.json gained after its first version: files written before lack them."""


def as_older_version(data: dict) -> dict:
    """metrics.json's dict as the first version wrote it: without the keys added since."""
    world = {k: v for k, v in data["world"].items() if k not in NEWER_WORLD_KEYS}
    runs = [{k: v for k, v in run.items() if k not in NEWER_RUN_KEYS} for run in data["runs"]]
    return {**data, "world": world, "runs": runs}
