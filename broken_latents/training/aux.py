"""The schedule of the activation-orthogonality loss of the post ("Incentivizing a single activation
peak"); the loss term itself is `saes.losses.aux_loss`, declared by the SAE.

L_aux = lambda / (B K) * sum_i sum_j [h_ij <= tau_j] * cos(x_i - b, W_j)^2

tau_j = ratio * (max of latent j over the last `window_batches` batches). Both lambda and
tau are 0 for `delay_samples`, then rise linearly over `warmup_samples`. The indicator
counts every h_ij <= tau_j, silent latents included: quick checks found the loss fixes the
5,7 -> 12 world only that way.

With `threshold = "mixture"`, tau_j is instead latent j's peak-model threshold (refit.py), refitted
every `refit_samples` on a probe batch, and scaled by the same warm-up factor; a latent without a
model (too few firings, or before the first fit) keeps the ratio rule.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..engine.backend import amax, xp
from ..config.schema import AuxConfig


def warmup_factor(config: AuxConfig, samples_seen: int) -> float:
    """0 during the delay, then linear to 1 over the warm-up."""
    past_delay = samples_seen - config.delay_samples
    if past_delay <= 0:
        return 0.0
    if config.warmup_samples == 0:
        return 1.0
    return min(1.0, past_delay / config.warmup_samples)


class RunningMax:
    """Per-latent max activation over the last `window` batches, as a ring buffer (numpy or torch)."""

    def __init__(self, window: int, n_saes: int, latents: int, zeros=torch.zeros):
        self.maxes_WSK = zeros((window, n_saes, latents))
        self.position = 0

    def update(self, batch_max_SK) -> None:
        self.maxes_WSK[self.position % self.maxes_WSK.shape[0]] = batch_max_SK
        self.position += 1

    def value(self):
        return amax(self.maxes_WSK, 0)


class AuxState:
    """What one SAE stack needs between steps to compute the aux loss."""

    def __init__(
        self,
        config: AuxConfig,
        n_saes: int,
        latents: int,
        zeros=torch.zeros,
        probe: Callable[[], tuple] | None = None,
    ):
        """probe (mixture thresholds): returns (x_SBD, h_SBK) of a fresh held-out batch."""
        self.config = config
        self.running_max = RunningMax(config.window_batches, n_saes, latents, zeros)
        self.probe = probe
        self.model_tau_SK = None
        """The mixture thresholds of the last refit, NaN where a latent has no model; None before."""
        self.last_refit: int | None = None
        self.refits = 0

    def schedule(self, samples_seen: int):
        """(lambda, tau_SK) for the step that starts after `samples_seen` samples."""
        factor = warmup_factor(self.config, samples_seen)
        base = self.config.threshold_ratio * self.running_max.value()
        if self.config.threshold == "mixture" and factor > 0:
            self._refit_if_due(samples_seen)
            if self.model_tau_SK is not None:
                model = self.model_tau_SK
                base = xp(base).where(xp(model).isnan(model), base, model)
        return self.config.coefficient * factor, factor * base

    def _refit_if_due(self, samples_seen: int) -> None:
        if (
            self.last_refit is not None
            and samples_seen - self.last_refit < self.config.refit_samples
        ):
            return
        if self.probe is None:
            raise ValueError("aux.threshold = 'mixture' needs a probe for its refits")
        from .refit import mixture_thresholds

        _, h_SBK = self.probe()
        taus = mixture_thresholds(h_SBK)
        ratio = self.running_max.value()
        self.model_tau_SK = (
            taus.astype(ratio.dtype)
            if xp(ratio) is np
            else torch.as_tensor(taus, dtype=ratio.dtype, device=ratio.device)
        )
        self.last_refit = samples_seen
        self.refits += 1
