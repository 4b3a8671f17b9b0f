"""Peak models refitted during training: the mixture thresholds of the aux loss and the directions
of the inverse technique (issue 11, deliverables 3 and 4).

The compiled kernel returns only each latent's batch max, never its activations, so every
`refit_samples` a `Probe` draws a fresh batch from a held-out stream (offset PROBE_STREAM) and
runs the SAE's torch forward on it (ReLU of the pre-activations: a JumpReLU at the aux loss's tau
would hide the peaks below tau, which are the ones the model must see). Each latent's peak model
(`peak_model.fit_peak_model`) is fitted with at most REFIT_COMPONENTS components on at most
REFIT_POINTS activations, k-means++ starts: a refit of 5 latents x 10 seeds then takes 0.7-0.8 s of
CPU (measured; tests/test_refit.py guards it), against ~7 s with the inspection defaults (5 components,
10k points). Most of it is scikit-learn's fixed cost per GaussianMixture fit (~2 ms, 3 fits a latent);
fewer points barely help (500: 0.69 s). At the default refit_samples (5M) a 150M-sample run refits 20
times after its delay: ~15 s of one core.

Mixture threshold (`training_threshold`): the model's threshold (where the main peak's density
overtakes the peak's below it; one peak: 3 stds below its mean), capped at main mean - 3 x
max(std, MIN_RELATIVE_GAP x mean). The cap matters for exact magnitudes: a clean latent's peak
is then nearly a point, its std ~0, and a threshold at the peak would penalise the latent's own
feature as soon as the weights drift between refits; the model cannot resolve peaks closer than
MIN_RELATIVE_GAP of the mean anyway, so no peak is narrower than that for this purpose.

Inverse directions (`separating_directions`): for a latent with >= 2 peaks, the inputs of the probe
batch are split by peak (`assign_peaks`); the MAIN peak here is the LOWEST one: in a narrow latent
that merges a parent with its children, the parent alone gives the weakest firing and each child
that fires with it adds a higher peak (single-latent world: parent alone at ~0.8, with one child
~1.2, both ~1.6). For every higher peak p, u_p = mean input of peak p - mean input of the lowest
peak, made orthogonal to the lowest peak's mean input (noisy magnitudes make the higher peaks'
inputs carry a larger parent too: that part is the feature, not what must go), and normalised.
"""

from __future__ import annotations

import numpy as np
import torch

from ..world.stream import PROBE_STREAM, DataStream
from ..analysis.peaks import MIN_RELATIVE_GAP, PeakModel, assign_peaks, fit_peak_model

REFIT_COMPONENTS = 3
REFIT_POINTS = 1000
SINGLE_PEAK_STDS = 3.0
MIN_PEAK_INPUTS = 10
"""A peak with fewer probe inputs than this gives no direction (its mean input is mostly noise)."""
MAX_DIRECTIONS = REFIT_COMPONENTS - 1


class Probe:
    """Fresh held-out inputs x_SBD for every refit, and the activations of an SAE stack on them."""

    def __init__(self, world, seeds: list[int], inputs: int, device):
        self.world, self.seeds, self.inputs, self.device = world, seeds, inputs, device
        self.stream = None  # started by the first refit: most runs never refit

    @torch.no_grad()
    def __call__(self, sae) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stream is None:
            self.stream = DataStream(
                self.world, self.seeds, self.inputs, self.device, offset=PROBE_STREAM, chunk=1
            )
        x_SBD = self.world.inputs(self.stream.next())
        return x_SBD, torch.relu(sae.encode_pre(x_SBD))


def fit_models(h_SBK: torch.Tensor) -> list[list[PeakModel]]:
    """One peak model per SAE and latent, with the refit caps."""
    h = h_SBK.detach().cpu().numpy()
    return [
        [
            fit_peak_model(
                h[s, :, k],
                max_components=REFIT_COMPONENTS,
                max_samples=REFIT_POINTS,
                seed=k,
                init="k-means++",
            )
            for k in range(h.shape[2])
        ]
        for s in range(h.shape[0])
    ]


def training_threshold(model: PeakModel) -> float | None:
    """tau_j for the aux loss from a latent's peak model (module docstring); None without a model."""
    if model.threshold is None or model.main is None:
        return None
    main = model.main
    cap = main.mean - SINGLE_PEAK_STDS * max(main.std, MIN_RELATIVE_GAP * main.mean)
    return float(max(min(model.threshold, cap), 0.0))


def mixture_thresholds(h_SBK: torch.Tensor) -> np.ndarray:
    """[S, K] training thresholds, NaN where a latent has no model."""
    return np.array(
        [
            [np.nan if (t := training_threshold(m)) is None else t for m in row]
            for row in fit_models(h_SBK)
        ],
        dtype=np.float64,
    )


def separating_directions(model: PeakModel, acts_B: np.ndarray, x_BD: np.ndarray) -> np.ndarray:
    """Unit directions [P, D] separating each higher peak's mean input from the lowest peak's (see the
    module docstring); no rows for a latent with one peak."""
    D = x_BD.shape[1]
    if model.n_peaks < 2:
        return np.zeros((0, D))
    peak_of = assign_peaks(model, acts_B)
    base_members = peak_of == 0
    if base_members.sum() < MIN_PEAK_INPUTS:
        return np.zeros((0, D))
    base = x_BD[base_members].mean(0)
    base_unit = base / max(np.linalg.norm(base), 1e-12)
    rows = []
    for p in range(1, model.n_peaks):
        members = peak_of == p
        if members.sum() < MIN_PEAK_INPUTS:
            continue
        u = x_BD[members].mean(0) - base
        u -= (u @ base_unit) * base_unit
        norm = np.linalg.norm(u)
        if norm > 1e-6 * max(np.linalg.norm(base), 1e-12):
            rows.append(u / norm)
    return np.array(rows[-MAX_DIRECTIONS:]).reshape(-1, D)
