"""The activation-orthogonality loss: schedule, running max window, indicator, value by hand."""

import pytest
import torch

from broken_latents.training.aux import AuxState, RunningMax, warmup_factor
from broken_latents.saes.losses import aux_loss
from broken_latents.config.schema import AuxConfig


@pytest.mark.parametrize(
    "seen, expected", [(0, 0.0), (100, 0.0), (110, 0.2), (125, 0.5), (150, 1.0), (10_000, 1.0)]
)
def test_warmup_schedule(seen, expected):
    config = AuxConfig(delay_samples=100, warmup_samples=50)
    assert warmup_factor(config, seen) == pytest.approx(expected)


def test_no_warmup_switches_on_after_delay():
    config = AuxConfig(delay_samples=100, warmup_samples=0)
    assert warmup_factor(config, 100) == 0.0 and warmup_factor(config, 101) == 1.0


def test_running_max_forgets_batches_older_than_the_window():
    running = RunningMax(window=3, n_saes=1, latents=2)
    for value in [1.0, 5.0, 2.0, 0.0]:
        running.update(torch.tensor([[value, 1.0]]))
    assert running.value().tolist() == [[5.0, 1.0]]  # window holds 5, 2, 0
    running.update(torch.tensor([[0.0, 1.0]]))
    assert running.value().tolist() == [[2.0, 1.0]]  # 5 left the window


def test_schedule_scales_lambda_and_tau_together():
    state = AuxState(
        AuxConfig(
            coefficient=1000.0,
            threshold_ratio=0.7,
            window_batches=2,
            delay_samples=10,
            warmup_samples=10,
        ),
        n_saes=1,
        latents=1,
    )
    state.running_max.update(torch.tensor([[4.0]]))
    lam, tau = state.schedule(15)
    assert lam == pytest.approx(500.0)
    assert tau.item() == pytest.approx(0.7 * 0.5 * 4.0)
    assert state.schedule(0)[1].item() == 0.0


def test_loss_value_by_hand():
    W = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # latent 0 along e0, latent 1 along e1
    b = torch.zeros(1, 2)
    x = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    h = torch.tensor([[[1.0, 0.0], [0.5, 2.0]]])
    tau = torch.tensor([[0.6, 1.0]])
    # counted: (0, 1) silent, cos 0 -> 0; (1, 0) below tau, cos^2 = 1/2; (0, 0) and (1, 1) above tau
    assert aux_loss(x, b, W, h, tau).mean().item() == pytest.approx(0.5 / (2 * 2))


def test_silent_latents_are_penalised():
    W = torch.tensor([[[1.0, 0.0]]])
    x = torch.tensor([[[2.0, 0.0]]])
    zero = torch.zeros(1, 1)
    assert aux_loss(x, torch.zeros(1, 2), W, torch.zeros(1, 1, 1), zero).item() == pytest.approx(
        1.0
    )


def test_bias_is_subtracted_before_the_cosine():
    W = torch.tensor([[[1.0, 0.0]]])
    x = torch.tensor([[[1.0, 1.0]]])
    b = torch.tensor([[0.0, 1.0]])  # x - b = e0, parallel to W
    assert aux_loss(x, b, W, torch.zeros(1, 1, 1), torch.ones(1, 1)).item() == pytest.approx(1.0)
