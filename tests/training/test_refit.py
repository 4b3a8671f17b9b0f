"""Peak refits during training: mixture thresholds of the aux loss and the inverse technique."""

import dataclasses
import time

import numpy as np
import pytest
import torch

from broken_latents.training.aux import AuxState
from broken_latents.config.schema import (
    AuxConfig,
    ConfigError,
    ExperimentConfig,
    HierarchyConfig,
    InverseConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.config.toml_io import from_dict
from broken_latents.config.overrides import apply_overrides
from broken_latents.training.inverse import InverseState
from broken_latents.analysis.peaks import assign_peaks, fit_peak_model
from broken_latents.training.refit import fit_models, separating_directions, training_threshold
from broken_latents.saes.losses import inverse_loss
from broken_latents.training.loop import train


def two_peaks(n=4000, low=1.0, high=2.0, std=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.normal(low, std, n // 2), rng.normal(high, std, n // 2), np.zeros(n)]
    )


def test_mixture_threshold_lies_between_two_known_peaks():
    tau = training_threshold(fit_peak_model(two_peaks()))
    assert abs(tau - 1.5) < 0.05  # equal weights and widths: the densities cross midway


def test_mixture_threshold_of_an_exact_peak_keeps_a_margin():
    """An exact magnitude gives a point-like peak: the threshold stays 15% below it, not at it."""
    acts = np.concatenate([np.full(500, 4.0), np.zeros(500)])
    assert training_threshold(fit_peak_model(acts)) == pytest.approx(4.0 * (1 - 3 * 0.05))


def test_aux_state_uses_the_refitted_mixture_after_the_delay_and_scales_it_by_the_warmup():
    h = torch.as_tensor(two_peaks(), dtype=torch.float32)[None, :, None]  # [S=1, B, K=1]
    config = AuxConfig(
        threshold="mixture",
        delay_samples=10,
        warmup_samples=10,
        refit_samples=100,
        window_batches=2,
    )
    state = AuxState(config, n_saes=1, latents=1, probe=lambda: (None, h))
    state.running_max.update(torch.tensor([[10.0]]))
    assert state.schedule(5)[1].item() == 0.0 and state.refits == 0  # delay: no fit, tau 0
    full = state.schedule(20)[1].item()
    assert state.refits == 1 and 1.15 < full < 1.85  # the model's, not 0.7 x 10
    assert state.schedule(15)[1].item() == pytest.approx(0.5 * full)  # same model, half the warm-up
    state.schedule(119)
    assert state.refits == 1
    state.schedule(121)
    assert state.refits == 2


def test_latent_without_model_keeps_the_ratio_rule():
    h = torch.zeros(1, 100, 1)  # silent: no model
    state = AuxState(
        AuxConfig(threshold="mixture", delay_samples=0, warmup_samples=0, window_batches=1),
        1,
        1,
        probe=lambda: (None, h),
    )
    state.running_max.update(torch.tensor([[2.0]]))
    assert state.schedule(1)[1].item() == pytest.approx(0.7 * 2.0)


@pytest.mark.slow
def test_refit_of_5_latents_by_10_seeds_stays_cheap():
    """0.7-0.8 s of CPU measured (process time: the wall clock on a shared machine says nothing);
    the inspection defaults (5 components, 10k points) take ~7 s."""
    rng = np.random.default_rng(0)
    h = torch.as_tensor(
        np.stack(
            [
                np.stack(
                    [two_peaks(4096, 1 + k, 3 + k, seed=int(rng.integers(1e6))) for k in range(5)],
                    -1,
                )
                for _ in range(10)
            ]
        ),
        dtype=torch.float32,
    )
    fit_models(h[:1, :, :1])  # imports
    start = time.process_time()
    fit_models(h)
    assert time.process_time() - start < 2.0


@pytest.mark.parametrize(
    "table, field",
    [
        ({"threshold": "median"}, "sae.0.aux.threshold"),
        ({"refit_samples": 0}, "sae.0.aux.refit_samples"),
        ({"refit_inputs": 10}, "sae.0.aux.refit_inputs"),
    ],
)
def test_aux_refit_fields_are_validated(table, field):
    with pytest.raises(ConfigError) as err:
        from_dict(ExperimentConfig, {"name": "x", "sae": [{"aux": table}]})
    assert err.value.field == field


@pytest.mark.parametrize(
    "table, field",
    [
        ({"coefficient": -1.0}, "sae.0.inverse.coefficient"),
        ({"refit_samples": 0}, "sae.0.inverse.refit_samples"),
        ({"delay_samples": -5}, "sae.0.inverse.delay_samples"),
        ({"warmup_samples": -5}, "sae.0.inverse.warmup_samples"),
        ({"refit_inputs": 1}, "sae.0.inverse.refit_inputs"),
        ({"bogus": 1}, "sae.0.inverse.bogus"),
    ],
)
def test_inverse_fields_are_validated(table, field):
    with pytest.raises(ConfigError) as err:
        from_dict(ExperimentConfig, {"name": "x", "sae": [{"inverse": table}]})
    assert err.value.field == field


def test_aux_threshold_is_validated_when_built_directly():
    with pytest.raises(ConfigError) as err:
        AuxConfig(threshold="median")
    assert err.value.field == "aux.threshold"


def test_set_switches_threshold_and_inverse_on():
    config = apply_overrides(
        ExperimentConfig(name="x"), ["sae.0.aux.threshold=mixture", "sae.0.inverse.coefficient=3"]
    )
    assert config.sae[0].aux.threshold == "mixture" and config.sae[0].inverse.coefficient == 3.0


# -- the inverse technique -------------------------------------------------------------------


def merged_latent_batch(n=4000, seed=0):
    """The single-latent world by hand: f0 fires at 0.3, f1 and f2 at 0.4 given f0; the latent is the merged
    direction (0.8, 0.4, 0.4), so the parent alone fires lowest."""
    rng = np.random.default_rng(seed)
    f = np.zeros((n, 4))
    f[:, 0] = rng.random(n) < 0.3
    f[:, 1] = (rng.random(n) < 0.4) * f[:, 0]
    f[:, 2] = (rng.random(n) < 0.4) * f[:, 0]
    f[:, 3] = rng.random(n) < 0.2
    w = np.array([0.8, 0.4, 0.4, 0.0])
    return f, f @ w


def test_separating_direction_points_from_the_parent_peak_to_the_children():
    x, h = merged_latent_batch()
    model = fit_peak_model(h)
    assert model.n_peaks == 3
    assert (
        assign_peaks(model, h)[(x[:, 0] == 1) & (x[:, 1] + x[:, 2] == 0)] == 0
    ).all()  # parent alone: lowest
    u = separating_directions(model, h, x)
    children = np.array([0, 1, 1, 0]) / np.sqrt(2)
    assert len(u) == 2 and (u @ children > 0.99).all() and (abs(u[:, 0]) < 0.01).all()


def test_one_peak_gives_no_direction():
    x, _ = merged_latent_batch()
    h = x[:, 0] * 1.0
    assert len(separating_directions(fit_peak_model(h), h, x)) == 0


def test_inverse_loss_by_hand():
    W = torch.tensor([[[1.0, 1.0, 0.0]]])  # one latent at 45 degrees to e0 and e1
    u = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]])
    assert inverse_loss(W, u, torch.tensor([[[1.0, 1.0]]])).item() == pytest.approx(1.0)
    assert inverse_loss(W, u, torch.tensor([[[1.0, 0.0]]])).item() == pytest.approx(0.5)


def test_inverse_state_keeps_directions_when_a_refit_finds_one_peak():
    x, h = merged_latent_batch()
    batches = iter(
        [
            (torch.as_tensor(x[None]), torch.as_tensor(h[None, :, None])),
            (torch.as_tensor(x[None]), torch.as_tensor(x[None, :, :1])),
        ]
    )
    state = InverseState(
        InverseConfig(delay_samples=0, warmup_samples=0, refit_samples=1),
        1,
        1,
        4,
        lambda: next(batches),
    )
    _, u, mask = state.schedule(1)
    first = u.clone()
    assert mask.sum() == 2
    _, u, mask = state.schedule(2)
    assert state.refits == 2 and mask.sum() == 2 and torch.equal(u, first)


SINGLE_WORLD = WorldConfig(
    features=4,
    dim=8,
    firing=[0.3, 0.4, 0.4, 0.2],
    magnitude=1.0,
    hierarchy=[HierarchyConfig(parent=0, children=[1, 2], mode="conditional")],
)


def _inverse_config(engine: str, samples: int = 60_000) -> ExperimentConfig:
    inverse = InverseConfig(
        coefficient=10.0,
        refit_samples=10_000,
        refit_inputs=2048,
        delay_samples=20_000,
        warmup_samples=10_000,
    )
    return ExperimentConfig(
        name="t",
        world=SINGLE_WORLD,
        train=TrainConfig(samples=samples, batch_size=256, lr=3e-3, seeds=2, engine=engine),
        sae=[
            SAEConfig(label="tied", architecture="tied", latents=1, inverse=inverse),
            SAEConfig(label="untied", architecture="untied", latents=1, inverse=inverse),
        ],
    )


@pytest.mark.slow
def test_inverse_term_trains_alike_on_every_engine():
    runs = {
        engine: train(_inverse_config(engine), progress=False)
        for engine in ("compiled", "arrays", "autograd")
    }
    assert all("inverse" in runs["compiled"].history.means()[label] for label in ("tied", "untied"))
    reference = {s.config.label: s.sae.W_dec_SKD.detach() for s in runs["autograd"].stacks}
    for engine in ("compiled", "arrays"):
        for stack in runs[engine].stacks:
            torch.testing.assert_close(
                stack.sae.W_dec_SKD.detach(),
                reference[stack.config.label],
                rtol=1e-3,
                atol=1e-4,
                msg=f"{engine} {stack.config.label}",
            )


@pytest.mark.parametrize("engine", ["compiled", "arrays", "autograd"])
def test_tiny_training_with_mixture_thresholds_runs_and_changes_tau(monkeypatch, engine):
    import broken_latents.training.refit as refit

    fitted = []
    original = refit.mixture_thresholds
    monkeypatch.setattr(
        refit, "mixture_thresholds", lambda h: fitted.append(original(h)) or fitted[-1]
    )
    aux = AuxConfig(
        coefficient=100.0,
        window_batches=3,
        delay_samples=20_000,
        warmup_samples=10_000,
        refit_samples=10_000,
        refit_inputs=2048,
    )
    config = ExperimentConfig(
        name="t",
        world=dataclasses.replace(SINGLE_WORLD, magnitude_std=0.2),
        train=TrainConfig(samples=60_000, batch_size=256, lr=3e-3, seeds=2, engine=engine),
        sae=[
            SAEConfig(label="ratio", latents=2, aux=aux),
            SAEConfig(
                label="mixture", latents=2, aux=dataclasses.replace(aux, threshold="mixture")
            ),
        ],
    )
    result = train(config, progress=False)
    ratio, mixture = (s.tau_SK for s in result.stacks)
    assert (
        len(fitted) == 4
    )  # after the delay: at 20k, 30k, 40k, 50k samples (60k, the end, is not yet due)
    last = torch.as_tensor(fitted[-1], dtype=torch.float32)
    assert torch.isfinite(last).any()
    # Past the warm-up tau is the last refit's thresholds (the ratio rule only where a latent has no model).
    torch.testing.assert_close(mixture[torch.isfinite(last)], last[torch.isfinite(last)])
    assert not torch.allclose(ratio, mixture, rtol=1e-2)
