"""A latent's activation peaks as a 1-D Gaussian mixture (deliverable 2 of issue 11).

The post's premise: a clean latent fires in one cluster; a broken latent that merges a feature
with its parent fires in several, and the highest cluster is the real feature. So we fit a
mixture to the latent's positive activations and read off:

- components: every fitted Gaussian (mean, std, weight), sorted by mean. The number of
  components is the BIC minimum over 1..MAX_COMPONENTS (scikit-learn's GaussianMixture).
- peaks: the components that matter, merged where they are not separated. Components below
  WEIGHT_FLOOR are ignored (a 1% component is a tail, not a feature). Walking up the sorted
  rest, a component starts a new peak when it is separated from the one below it: Ashman's
  D = sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2) >= MIN_SEPARATION (two Gaussians with D >= 2 are
  cleanly apart) and the gap is at least MIN_RELATIVE_GAP of the upper mean (a BIC fit splits a
  skewed peak, or the ripples other features add to it, into close narrow components). Otherwise
  it joins the peak below; a peak's mean, std and weight are its components' combined moments.
- main peak: the highest-mean peak (the premise: the top cluster is the feature).
- threshold: between the main peak and the peak just below it, the activation where the two
  peaks' weighted densities are equal (a firing above it more likely belongs to the main peak).
  With one peak: main mean - THRESHOLD_STDS x main std, not below the fitted floor. None for a
  latent with too few firings to fit.

Tied latents fire weakly on most inputs; that bulk near zero would take components from the
real peaks, so by default only activations above PEAK_FLOOR x the latent's max are fitted, as
`count_peaks` does (floor_ratio=0 fits every positive activation).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

PEAK_FLOOR = 0.2
"""Peaks are counted (count_peaks) and fitted above this fraction of a latent's max. Tied
latents fire weakly on most inputs, and even a clean latent (cos 0.996) shows an interference bump
at 12-17% of its max; the weakest true peak of a broken latent (the parent alone) sits near 25%."""
MAX_COMPONENTS = 5
MAX_SAMPLES = 10_000
"""Fit on at most this many activations (a seeded subsample): a 2% peak still holds 200 points,
and the five fits take about 0.3 s per latent on one core (20k: 0.8 s)."""
MIN_SAMPLES = 20
"""Fewer positive activations than this above the floor: no model (peaks 0, threshold None)."""
WEIGHT_FLOOR = 0.02
"""Components lighter than this share of the fitted activations are not peaks."""
MIN_SEPARATION = 2.0
"""Ashman's D between adjacent components for them to be separate peaks."""
MIN_RELATIVE_GAP = 0.05
"""...and their means at least this fraction of the upper mean apart."""
MAIN_SEPARATION = 0.15
"""A peak whose mean lies within this fraction of the heaviest peak's mean of it joins that peak:
a shoulder a few percent off the main peak is a leak of another feature (a clean tied latent at 18.0
with a bump at 19.5 when an unlearned feature fires too), not a second feature; a peak at a quarter
of the main one is (issue 18)."""
THRESHOLD_STDS = 3.0
"""One peak: the threshold sits this many stds below its mean."""


@dataclass(frozen=True)
class Gaussian:
    mean: float
    std: float
    weight: float

    def to_json(self) -> dict:
        return {
            "mean": round(self.mean, 6),
            "std": round(self.std, 6),
            "weight": round(self.weight, 6),
        }


@dataclass(frozen=True)
class PeakModel:
    components: tuple[Gaussian, ...]
    """Every fitted component, sorted by mean; weights sum to 1 over the fitted activations."""
    peaks: tuple[Gaussian, ...]
    """Separated peaks (merged significant components), sorted by mean."""
    groups: tuple[tuple[int, ...], ...]
    """Indices into `components` that make up each peak."""
    threshold: float | None
    floor: float
    """Activations at or below this value were left out of the fit."""
    fitted: int
    """Number of activations the mixture was fitted to (after the floor and the subsample)."""

    @property
    def n_peaks(self) -> int:
        return len(self.peaks)

    @property
    def main(self) -> Gaussian | None:
        return self.peaks[-1] if self.peaks else None

    @property
    def off_main_weight(self) -> float:
        """Share of the fitted activations in peaks other than the main one (0 with one peak)."""
        if not self.peaks:
            return 0.0
        total = sum(p.weight for p in self.peaks)
        return float(1.0 - self.peaks[-1].weight / total)

    def density(self, x: np.ndarray, indices: tuple[int, ...] | None = None) -> np.ndarray:
        """Weighted mixture density at x, over all components or the given ones."""
        chosen = range(len(self.components)) if indices is None else indices
        return mixture_density(x, [self.components[i] for i in chosen])

    def to_json(self) -> dict:
        return {
            "mixture": [c.to_json() for c in self.components],
            "peaks": self.n_peaks,
            "peak_means": [round(p.mean, 6) for p in self.peaks],
            "threshold": None if self.threshold is None else round(self.threshold, 6),
            "floor": round(self.floor, 6),
        }


EMPTY = PeakModel((), (), (), None, 0.0, 0)


def mixture_density(x: np.ndarray, components) -> np.ndarray:
    """Weighted density at x of Gaussians given as `Gaussian`s or as metrics.json's {mean, std, weight}
    (whose std may round to 0 there: such a component is a spike that draws nothing)."""
    x = np.asarray(x, dtype=float)
    total = np.zeros_like(x)
    for c in components:
        mean, std, weight = (
            (c["mean"], c["std"], c["weight"]) if isinstance(c, dict) else (c.mean, c.std, c.weight)
        )
        std = max(std, 1e-12)
        total += weight * np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    return total


def fit_peak_model(
    acts: np.ndarray,
    floor_ratio: float = PEAK_FLOOR,
    max_components: int = MAX_COMPONENTS,
    max_samples: int = MAX_SAMPLES,
    seed: int = 0,
    init: str = "kmeans",
    tol: float = 1e-3,
) -> PeakModel:
    """Fit the peak model to one latent's activations (any shape; zeros and negatives are ignored).
    `init` and `tol` go to GaussianMixture (init_params, tol): the refits during training trade a
    little accuracy for speed there (refit.py).

    Deterministic for a given input and seed: the subsample and the EM starts are seeded."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    x = np.asarray(acts, dtype=np.float64).ravel()
    x = x[x > 0]
    if x.size == 0:
        return EMPTY
    floor = float(floor_ratio * x.max())
    x = x[x > floor]
    if x.size < MIN_SAMPLES:
        return PeakModel((), (), (), None, floor, int(x.size))
    if x.size > max_samples:
        x = np.random.default_rng(seed).choice(x, max_samples, replace=False)
    X = x[:, None]
    # A latent whose activations are (nearly) one value, e.g. a feature with an exact magnitude
    # and no interference: the mixture is that value; EM would only chase a zero variance.
    spread = float(x.std())
    if spread <= 1e-6 * max(float(x.mean()), 1e-12):
        only = Gaussian(float(x.mean()), max(spread, 1e-6 * float(x.mean())), 1.0)
        return PeakModel(
            (only,), (only,), ((0,),), _single_peak_threshold(only, floor), floor, int(x.size)
        )
    # reg_covar scaled to the data: EM must not collapse a component onto a few identical values.
    reg = (1e-3 * spread) ** 2
    best, best_bic = None, math.inf
    # One BLAS/OpenMP thread: on these tiny problems more threads only contend (5x slower on 2 cores).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k in range(1, min(max_components, x.size // MIN_SAMPLES) + 1):
            gm = GaussianMixture(
                k,
                covariance_type="full",
                reg_covar=reg,
                n_init=1,
                init_params=init,
                max_iter=200,
                tol=tol,
                random_state=seed,
            ).fit(X)
            bic = gm.bic(X)
            if bic < best_bic:
                best, best_bic = gm, bic
    order = np.argsort(best.means_[:, 0])
    components = tuple(
        Gaussian(
            float(best.means_[i, 0]),
            float(math.sqrt(best.covariances_[i, 0, 0])),
            float(best.weights_[i]),
        )
        for i in order
    )
    groups = _merge_near_main(_group_peaks(components), components)
    peaks = tuple(_combine([components[i] for i in g]) for g in groups)
    model = PeakModel(components, peaks, groups, None, floor, int(x.size))
    if len(peaks) == 1:
        threshold = _single_peak_threshold(peaks[0], floor)
    else:
        threshold = _equal_density_point(model, groups[-2], groups[-1])
    return PeakModel(components, peaks, groups, threshold, floor, int(x.size))


def ashman_d(a: Gaussian, b: Gaussian) -> float:
    return math.sqrt(2) * abs(a.mean - b.mean) / math.sqrt(a.std**2 + b.std**2)


def _separated(lower: Gaussian, upper: Gaussian) -> bool:
    return ashman_d(
        lower, upper
    ) >= MIN_SEPARATION and upper.mean - lower.mean >= MIN_RELATIVE_GAP * abs(upper.mean)


def _group_peaks(components: tuple[Gaussian, ...]) -> tuple[tuple[int, ...], ...]:
    significant = [i for i, c in enumerate(components) if c.weight >= WEIGHT_FLOOR]
    if (
        not significant
    ):  # five equally tiny components cannot happen (weights sum to 1), but be total
        significant = [max(range(len(components)), key=lambda i: components[i].weight)]
    groups: list[list[int]] = [[significant[0]]]
    for previous, current in zip(significant, significant[1:]):
        if _separated(components[previous], components[current]):
            groups.append([current])
        else:
            groups[-1].append(current)
    return tuple(tuple(g) for g in groups)


def _merge_near_main(
    groups: tuple[tuple[int, ...], ...], components: tuple[Gaussian, ...]
) -> tuple[tuple[int, ...], ...]:
    """Groups whose combined mean lies within MAIN_SEPARATION x the heaviest group's mean of it join it."""
    if len(groups) < 2:
        return groups
    peaks = [_combine([components[i] for i in g]) for g in groups]
    main = max(range(len(groups)), key=lambda g: peaks[g].weight)
    near = [
        g
        for g in range(len(groups))
        if abs(peaks[g].mean - peaks[main].mean) < MAIN_SEPARATION * abs(peaks[main].mean)
    ]
    merged = tuple(sorted(i for g in near for i in groups[g]))
    rest = [groups[g] for g in range(len(groups)) if g not in near]
    return tuple(sorted([merged, *rest], key=lambda g: min(g)))


def _combine(parts: list[Gaussian]) -> Gaussian:
    """One Gaussian with the parts' combined weight, mean and variance (law of total variance)."""
    weight = sum(p.weight for p in parts)
    mean = sum(p.weight * p.mean for p in parts) / weight
    var = sum(p.weight * (p.std**2 + (p.mean - mean) ** 2) for p in parts) / weight
    return Gaussian(mean, math.sqrt(var), weight)


def _single_peak_threshold(peak: Gaussian, floor: float) -> float:
    return max(floor, peak.mean - THRESHOLD_STDS * peak.std)


def _equal_density_point(model: PeakModel, lower: tuple[int, ...], upper: tuple[int, ...]) -> float:
    """Where the upper peak's weighted density overtakes the lower one's, between their means."""
    from scipy.optimize import brentq

    lo, hi = model.peaks[-2].mean, model.peaks[-1].mean

    def excess(v: float) -> float:
        return float(
            model.density(np.array([v]), upper)[0] - model.density(np.array([v]), lower)[0]
        )

    # Scan for the last sign change: components of one peak can make the difference wiggle.
    grid = np.linspace(lo, hi, 257)
    diff = model.density(grid, upper) - model.density(grid, lower)
    negative = np.flatnonzero(diff <= 0)
    if negative.size == 0 or negative[-1] == grid.size - 1:
        return float((lo + hi) / 2)  # no crossing between the means (degenerate fit): the midpoint
    i = negative[-1]
    return float(brentq(excess, grid[i], grid[i + 1]))


def assign_peaks(model: PeakModel, acts: np.ndarray) -> np.ndarray:
    """The peak (index into `model.peaks`, sorted by mean) each activation most likely belongs to, by
    the peaks' weighted densities; -1 for activations at or below the fitted floor (and for every
    activation of a latent without a model)."""
    x = np.asarray(acts, dtype=np.float64).ravel()
    out = np.full(x.shape, -1, dtype=np.int64)
    if not model.peaks:
        return out
    above = x > model.floor
    densities = np.stack([model.density(x[above], group) for group in model.groups])
    out[above] = densities.argmax(0)
    return out


# -- the histogram count: every latent's cross-check of its mixture --------------------------

PEAK_SMOOTHING = 0.02
"""Gaussian smoothing width, as a fraction of the max: merges the ripples other features add to one peak."""
PEAK_PROMINENCE = 0.05
"""A peak must rise this fraction of the tallest smoothed bin above its surroundings."""
HISTOGRAM_BINS = 200


def count_peaks(acts: np.ndarray) -> tuple[int, list[float]]:
    """Number and locations of activation peaks above PEAK_FLOOR * max; 0 for a silent latent."""
    top = float(acts.max()) if acts.size else 0.0
    if top <= 0:
        return 0, []
    low = PEAK_FLOOR * top
    counts, edges = np.histogram(acts[acts > low], bins=HISTOGRAM_BINS, range=(low, top * 1.0001))
    sigma_bins = PEAK_SMOOTHING * top / (edges[1] - edges[0])
    smooth = gaussian_filter1d(counts.astype(float), sigma_bins, mode="constant")
    padded = np.concatenate([[0.0], smooth, [0.0]])  # so a peak at either end counts
    idx, _ = find_peaks(padded, prominence=PEAK_PROMINENCE * padded.max())
    centres = (edges[:-1] + edges[1:]) / 2
    return len(idx), [round(float(centres[i - 1]), 4) for i in idx]
