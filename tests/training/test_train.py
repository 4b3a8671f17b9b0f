"""Training: same seed, same SAEs; the fast engine trains what the autograd reference trains."""

import torch

from broken_latents.config.schema import (
    AuxConfig,
    ExperimentConfig,
    HierarchyConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.training.loop import train

WORLD = WorldConfig(
    features=6,
    dim=10,
    firing=0.25,
    magnitude={"linear": [3.0, 1.0]},
    hierarchy=[HierarchyConfig(parent=0, children=[1, 2])],
)
SAES = [
    SAEConfig(label="tied", architecture="tied", latents=4),
    SAEConfig(label="untied", architecture="untied", latents=3, activation="jumprelu"),
    SAEConfig(
        label="aux",
        architecture="tied",
        latents=4,
        aux=AuxConfig(
            coefficient=100.0, window_batches=3, delay_samples=2_000, warmup_samples=4_000
        ),
    ),
    SAEConfig(label="nested", architecture="untied", latents=4, matryoshka_widths=[1, 2, 4]),
]


def _config(engine: str, samples: int = 20_000) -> ExperimentConfig:
    return ExperimentConfig(
        name="t",
        world=WORLD,
        sae=SAES,
        train=TrainConfig(samples=samples, batch_size=256, lr=1e-3, seeds=2, engine=engine),
    )


def _weights(result) -> dict:
    return {
        (s.config.label, name): p.detach().clone()
        for s in result.stacks
        for name, p in s.sae.named_parameters()
    }


def test_same_seed_same_result():
    a, b = (
        _weights(train(_config("auto"), progress=False)),
        _weights(train(_config("auto"), progress=False)),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hand_gradients_train_like_autograd():
    fast = _weights(train(_config("auto"), progress=False))
    reference = _weights(train(_config("autograd"), progress=False))
    for key in fast:
        torch.testing.assert_close(fast[key], reference[key], rtol=1e-3, atol=1e-4, msg=str(key))


def test_arrays_engine_trains_like_compiled():
    """The GPU runs the fast path on torch tensors ("arrays"); here the same code runs them on the CPU."""
    compiled_run = _weights(train(_config("compiled"), progress=False))
    torch_run = _weights(train(_config("arrays"), progress=False))
    for key in compiled_run:
        torch.testing.assert_close(
            torch_run[key], compiled_run[key], rtol=1e-3, atol=1e-4, msg=str(key)
        )


def test_training_reduces_the_loss():
    result = train(_config("auto", samples=200_000), progress=False)
    first, last = result.history.means(0), result.history.means()
    for label in ("tied", "untied", "aux", "nested"):
        assert last[label]["mse"] < 0.5 * first[label]["mse"], label


def test_every_engine_logs_every_declared_term_per_seed():
    """history.json's source: the hand-gradient engines log the aux term too, per seed, as autograd does."""
    runs = {
        engine: train(_config(engine, samples=12_000), progress=False)
        for engine in ("compiled", "arrays", "autograd")
    }
    reference = runs["autograd"].history
    aux = reference.run("aux", 0).terms
    assert (
        aux.keys() == {"mse", "l1", "aux"} and aux["aux"][0] is None and aux["aux"][-1] is not None
    )  # delay first
    for engine, result in runs.items():
        assert result.history.steps == reference.steps, engine
        assert [(r.label, r.seed) for r in result.history.runs] == [
            (r.label, r.seed) for r in reference.runs
        ]
        for run, expected in zip(result.history.runs, reference.runs):
            assert run.terms.keys() == expected.terms.keys(), (engine, run.label)
            for term, values in run.terms.items():
                assert len(values) == len(reference.steps), (engine, run.label, term)
                assert [v is None for v in values] == [v is None for v in expected.terms[term]], (
                    engine,
                    term,
                )
                torch.testing.assert_close(
                    torch.tensor([v for v in values if v is not None]),
                    torch.tensor([v for v in expected.terms[term] if v is not None]),
                    rtol=1e-3,
                    atol=1e-5,
                    msg=f"{engine} {run.label} {term}",
                )


def test_first_seed_trains_what_a_longer_run_trains_for_that_seed():
    from broken_latents.config.schema import ExperimentConfig, SAEConfig, TrainConfig, WorldConfig
    from broken_latents.training.loop import train

    def config(seeds, first_seed):
        return ExperimentConfig(
            name="t",
            world=WorldConfig(features=3, dim=4, firing=0.3),
            train=TrainConfig(
                samples=20_000, seeds=seeds, first_seed=first_seed, eval_samples=1000
            ),
            sae=[SAEConfig(label="tied", latents=2)],
        )

    both = train(config(2, 0), progress=False)
    second = train(config(1, 1), progress=False)
    assert second.seeds == [1]
    assert torch.equal(second.stacks[0].sae.W_dec_SKD[0], both.stacks[0].sae.W_dec_SKD[1])
