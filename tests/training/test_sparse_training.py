"""Every architecture trains on a sparse world's inputs; the engines agree there too."""

import os

import pytest
import torch

from broken_latents.config.schema import (
    AuxConfig,
    ConfigError,
    CorrelationConfig,
    ExperimentConfig,
    SAEConfig,
    TrainConfig,
    TreeConfig,
    WorldConfig,
)
from broken_latents.engine import sparse_latents
from broken_latents.training.loop import choose_engine, train
from broken_latents.world.prefetch import Prefetcher

WORLD = WorldConfig(
    features=48,
    dim=16,
    firing={"zipf": {"exponent": 0.5, "max": 0.4, "min": 0.02}},
    magnitude={"linear": [5.0, 4.0]},
    magnitude_std={"folded_normal": {"mean": 0.5, "std": 0.5}},
    tree=TreeConfig(
        roots=2,
        branching=3,
        depth=2,
        mutually_exclusive=1.0,
        compensate_probabilities=True,
        scale_children_by_parent=True,
    ),
    correlation=CorrelationConfig(rank=3, scale=0.2),
    bias=0.5,
)
EVERY_KIND = [
    SAEConfig(label="tied", architecture="tied", latents=24),
    SAEConfig(label="untied", architecture="untied", latents=24),
    SAEConfig(label="jumprelu", architecture="untied", latents=24, activation="jumprelu"),
    SAEConfig(label="topk", architecture="untied", latents=24, activation="topk", k=4),
    SAEConfig(label="batchtopk", architecture="untied", latents=24, activation="batchtopk", k=4),
    SAEConfig(
        label="matryoshka",
        architecture="untied",
        latents=24,
        activation="batchtopk",
        k=4,
        matryoshka_widths=[6, 12, 24],
    ),
    SAEConfig(
        label="aux",
        architecture="tied",
        latents=24,
        aux=AuxConfig(
            coefficient=100.0, window_batches=3, delay_samples=5_000, warmup_samples=5_000
        ),
    ),
]


def _config(saes, engine="auto", samples=40_000) -> ExperimentConfig:
    return ExperimentConfig(
        name="t",
        world=WORLD,
        sae=saes,
        train=TrainConfig(samples=samples, batch_size=256, lr=3e-3, seeds=2, engine=engine),
    )


def test_every_architecture_learns_on_a_sparse_world():
    result = train(_config(EVERY_KIND), progress=False)
    assert result.world.sparse
    for label in [s.label for s in EVERY_KIND]:
        first, last = result.history.means(0)[label]["mse"], result.history.means(-1)[label]["mse"]
        assert last < 0.5 * first, (label, first, last)  # they learn the inputs, bias and all


def test_arrays_engine_trains_like_autograd_on_inputs():
    saes = [
        SAEConfig(label="untied", architecture="untied", latents=12),
        SAEConfig(label="tied", latents=12),
    ]
    arrays = train(_config(saes, "arrays", 5_000), progress=False)
    reference = train(_config(saes, "autograd", 5_000), progress=False)
    for a, b in zip(arrays.stacks, reference.stacks):
        for (name, p), q in zip(a.sae.named_parameters(), b.sae.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)


def test_compiled_engine_refused_on_sparse_worlds():
    assert choose_engine(_config(EVERY_KIND[:1]), "cpu").name == "sparse-latents-compiled"
    with pytest.raises(ConfigError) as err:
        choose_engine(_config(EVERY_KIND[:1], "compiled"), "cpu")
    assert err.value.field == "train.engine" and "sparse" in str(err.value)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the helper thread needs a second core")
def test_paced_sampling_draws_once_a_step_after_the_encoder(monkeypatch):
    """With the helper thread, the sampling thread's turn comes once a step, after the encoder's
    product wherever the step shares it with the helper (`Prefetcher.pace`)."""
    events = []
    encode, give_turn = sparse_latents.encode, Prefetcher.give_turn

    def logged_encode(*args):
        events.append("encode" if args[3] is not None else "encode alone")
        return encode(*args)

    def logged_turn(self):
        events.append("turn")
        give_turn(self)

    monkeypatch.setattr(sparse_latents, "encode", logged_encode)
    monkeypatch.setattr(Prefetcher, "give_turn", logged_turn)
    batchtopk = [s for s in EVERY_KIND if s.label == "batchtopk"]
    config = _config(batchtopk, samples=30 * 256)
    assert choose_engine(config, "cpu").name == "sparse-latents-compiled"
    train(config, progress=False)
    steps = [events[i : i + 2] for i in range(0, len(events), 2)]
    assert len(steps) == 30 and ["encode", "turn"] in steps and ["turn", "encode alone"] in steps
    assert all(step in (["encode", "turn"], ["turn", "encode alone"]) for step in steps)
