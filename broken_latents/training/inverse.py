"""The schedule and state of the inverse technique for narrow SAEs (`[sae.inverse]`); the loss term
itself is `saes.losses.inverse_loss`, declared by the SAE as a parameter term.

The post ("Co-occurrence breaks single-latent SAEs") leaves as future work "the inverse of what we
did previously": project out the high activating peaks instead of the low ones. Operationalised here:

    L_inv = coefficient * factor * mean_j sum_p cos(W_dec_j, u_jp)^2

where u_jp are the directions that separate latent j's higher activation peaks from its lowest
(main) one, from its peak model on a probe batch (refit.py: u_p = mean input of peak p - mean input
of the lowest peak, orthogonal to the latter). Why this form:
- the lowest peak is the main one: a narrow latent that merges parent and children fires weakest
  on the parent alone and higher for each child with it, so the higher peaks mark the children;
- the post's aux loss penalises cos(x - b, W_j)^2 of single inputs; here the inputs of one peak are
  averaged first, and the parent's share (common to all peaks) cancels in the difference, so the
  penalty pushes only the children out of W_j, not the parent;
- it depends on W_dec alone, so it needs no batch: its gradient is cheap by autograd on every engine,
  outside the compiled kernel;
- the directions are refitted every `refit_samples`. A refit that finds a single peak keeps the
  previous directions: a latent that has shed its children shows one peak, and dropping the penalty
  then would let the children back in (an oscillation, not a fix). A latent that never showed
  several peaks has no directions and no penalty.
The factor is 0 for `delay_samples` (the latent must form its peaks first) and rises linearly over
`warmup_samples`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .aux import warmup_factor
from ..config.schema import InverseConfig
from .refit import MAX_DIRECTIONS, fit_models, separating_directions


class InverseState:
    """The directions u_SKPD (mask_SKP marks the real ones) of one SAE stack, and their refits."""

    def __init__(
        self,
        config: InverseConfig,
        n_saes: int,
        latents: int,
        dim: int,
        probe: Callable[[], tuple],
        device="cpu",
    ):
        """probe: returns (x_SBD, h_SBK) of a fresh held-out batch."""
        self.config, self.probe = config, probe
        self.u_SKPD = torch.zeros(n_saes, latents, MAX_DIRECTIONS, dim, device=device)
        self.mask_SKP = torch.zeros(n_saes, latents, MAX_DIRECTIONS, device=device)
        self.last_refit: int | None = None
        self.refits = 0

    def schedule(self, samples_seen: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(weight, u_SKPD, mask_SKP) for the step that starts after `samples_seen` samples."""
        factor = warmup_factor(self.config, samples_seen)
        if factor > 0 and (
            self.last_refit is None or samples_seen - self.last_refit >= self.config.refit_samples
        ):
            self.refit()
            self.last_refit = samples_seen
        return self.config.coefficient * factor, self.u_SKPD, self.mask_SKP

    def refit(self) -> None:
        x_SBD, h_SBK = self.probe()
        x, h = x_SBD.cpu().double().numpy(), h_SBK.cpu().numpy()
        for s, row in enumerate(fit_models(h_SBK)):
            for k, model in enumerate(row):
                u_PD = separating_directions(model, h[s, :, k], x[s])
                if len(u_PD) == 0:
                    continue  # one peak (or too few inputs): keep what an earlier refit found
                self.u_SKPD[s, k] = 0.0
                self.mask_SKP[s, k] = 0.0
                self.u_SKPD[s, k, : len(u_PD)] = torch.as_tensor(u_PD, dtype=self.u_SKPD.dtype)
                self.mask_SKP[s, k, : len(u_PD)] = 1.0
        self.refits += 1
