"""preflight's time estimate follows the engine that will run: the sparse-latent engine's costs on a
sparse world, autograd's 6 D K flops for an SAE it does not cover, the sampler's pace where slower."""

import dataclasses

import pytest

from broken_latents.config.schema import ExperimentConfig, SAEConfig, TrainConfig
from broken_latents.experiments.synthbench import synthbench_world
from broken_latents.training import preflight
from broken_latents.training.preflight import (
    SECONDS_PER_FLOP,
    SPARSE_SECONDS_PER_INPUT,
    estimate_seconds,
    training_seconds_per_sample,
    world_seconds,
)

BATCHTOPK = SAEConfig(
    label="b", architecture="untied", latents=1024, activation="batchtopk", k=32, l1=0.0
)


def _config(features: int, *saes: SAEConfig) -> ExperimentConfig:
    return ExperimentConfig(
        name="t",
        world=synthbench_world(features, 256),
        train=TrainConfig(samples=300_000, batch_size=1024, lr=3e-4, seeds=1),
        sae=list(saes),
    )


def test_sparse_latent_engine_is_estimated_by_its_own_costs():
    """Width 1024, k 32 on 256 dims: about 83k samples/s (whole runs measured 62k-81k at load 1.4),
    where 6 D K flops at one core's toy rate said 13k."""
    per_sample = training_seconds_per_sample(_config(2048, BATCHTOPK))
    assert 70_000 < 1 / per_sample < 150_000
    assert per_sample < 6 * 256 * 1024 * SECONDS_PER_FLOP["cpu"] / 5


def test_uncovered_saes_and_gpus_keep_the_flop_model():
    jumprelu = dataclasses.replace(BATCHTOPK, label="j", activation="jumprelu", k=None)
    autograd = 6 * 256 * 1024 * SECONDS_PER_FLOP["cpu"]
    both = training_seconds_per_sample(_config(2048, BATCHTOPK, jumprelu))
    assert both - training_seconds_per_sample(_config(2048, BATCHTOPK)) == pytest.approx(autograd)
    cuda = training_seconds_per_sample(_config(2048, BATCHTOPK), "cuda")
    assert cuda == pytest.approx(6 * 256 * 1024 * SECONDS_PER_FLOP["cuda"])


def test_the_sampler_sets_the_pace_where_slower(monkeypatch):
    config = _config(4096, BATCHTOPK)
    fixed, per_feature = SPARSE_SECONDS_PER_INPUT
    sampling = 300_000 * (fixed + per_feature * 4096)
    training = 300_000 * training_seconds_per_sample(config)
    assert estimate_seconds(config) - world_seconds(config.world) == pytest.approx(
        max(sampling, training)
    )
    monkeypatch.setattr(preflight, "SPARSE_SECONDS_PER_INPUT", (1e-3, 0.0))  # a slow sampler
    assert estimate_seconds(config) - world_seconds(config.world) == pytest.approx(300.0)
