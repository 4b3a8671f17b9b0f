"""The convergence rule: a loss term still falling at the end, measured against the whole loss."""

import numpy as np
import pytest

from broken_latents.analysis.convergence import MIN_WINDOW, STILL_FALLING, loss_drop, still_falling

WEIGHTS = {"mse": 1.0, "l1": 0.01}


def _noisy(level: np.ndarray, seed: int = 0, noise: float = 0.03) -> list[float]:
    return (level * (1 + noise * np.random.default_rng(seed).standard_normal(len(level)))).tolist()


def test_a_falling_mse_is_still_falling_though_the_l1_rises():
    steps = np.arange(40)
    mse = 1.0 - 0.02 * steps  # the MSE keeps falling by 0.1 per window of 5 steps ...
    l1 = 10.0 + steps  # ... while the L1 (x 0.01) rises by half that: the sum moves little
    drop, term = loss_drop({"mse": mse.tolist(), "l1": l1.tolist()}, WEIGHTS)
    total = mse + 0.01 * l1
    assert (
        1 - total[-5:].mean() / total[-10:-5].mean() < STILL_FALLING
    )  # the whole loss alone would not tell
    assert term == "mse" and drop > STILL_FALLING and still_falling(drop)


def test_a_plateau_with_batch_noise_has_converged():
    flat = np.full(100, 0.5)
    drop, _ = loss_drop({"mse": _noisy(flat), "l1": _noisy(flat * 100, seed=1)}, WEIGHTS)
    assert abs(drop) < STILL_FALLING / 2 and still_falling(drop) is False


def test_a_tiny_mse_halving_in_the_lr_decay_is_converged():
    """A clean tied SAE: MSE ~0.1% of the loss, halving as the learning rate decays."""
    mse = np.concatenate([np.full(80, 1e-3), np.geomspace(1e-3, 5e-4, 20)])
    drop, _ = loss_drop({"mse": mse.tolist(), "l1": [100.0] * 100}, WEIGHTS)
    assert drop < 0.01


def test_too_few_steps_or_gaps_tell_nothing():
    assert loss_drop({"mse": [1.0, 0.5, 0.2]}, WEIGHTS) is None
    assert loss_drop({"mse": [1.0] * (2 * MIN_WINDOW - 1)}, WEIGHTS) is None
    assert loss_drop({"mse": [1.0] * 30, "l1": [None] * 30}, WEIGHTS) is None
    assert still_falling(None) is None


@pytest.mark.parametrize("scheduled", ["aux", "inverse"])
def test_scheduled_terms_are_left_out(scheduled):
    """An aux penalty ramping up (weight 0 in the rule) does not make a converged SAE look unconverged."""
    mse = [0.5] * 40
    ramp = np.linspace(0, 10, 40)[::-1].tolist()
    drop, term = loss_drop({"mse": mse, scheduled: ramp}, {"mse": 1.0, scheduled: 0.0})
    assert term == "mse" and drop == pytest.approx(0.0)
