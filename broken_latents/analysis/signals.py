"""Per-latent signals of brokenness that read only the SAE's weights and its activations (never a
true feature), so they work on an SAE trained anywhere. Each is a number, 0 for a clean-looking
latent, larger for a more suspicious one; `score.py` turns them into one calibrated probability.

Notation: W_j the decoder row of latent j, E_j its encoder column (W_enc[:, j]), c_jk = cos(W_j, W_k),
a latent is *active* on an input when h_j >= ACTIVE_SHARE x its max (tied latents fire weakly on
most inputs; that bulk is interference, not the latent's feature).

- peak_separated_weight: share of the latent's fitted firings (peak model, analysis/peaks.py) in
  peaks whose mean lies at least PEAK_SEPARATION x the main peak's mean away from the main (the
  heaviest) peak. A merged latent fires once per combination of the features it merges (the
  parent alone at a quarter of the child-with-parent peak); a clean latent with a small leak of
  another feature has a shoulder a few percent from its main peak, which does not count.
- peak_spread: std / mean of the firings above the peak floor; merging widens the distribution
  even where the mixture does not resolve separate peaks.
- weak_firing_share: of the firings reaching WEAK_LOW x the main peak's mean, the share below
  WEAK_HIGH x it. A latent that fires at a fraction of its strength on other inputs (a leak of
  another feature large enough to fire on it, a tied parent that subtracts its child) fires
  there as a detector of the wrong thing; below WEAK_LOW it is interference.
- encoder_decoder_gap: 1 - cos(E_j, W_j), untied SAEs only (0 when tied). Absorption writes itself
  into the encoder: the parent latent's encoder subtracts its child, and the child latent, which
  decodes child + parent, still reads mostly the child.
- encoder_turn: max over the latent's neighbours k of c_jk - cos(E_j, W_k), at least 0: the
  encoder turning away from a direction the decoder shares with another latent (the absorbed
  parent reads -child so as to stay silent when the child latent, which decodes the parent too, fires).
- exclusive_overlap: max over neighbours k of max(c_jk, 0) x exclusion_jk, where exclusion_jk = 1 -
  observed co-activations / expected under independence (clipped to [0, 1]; 0 with fewer than
  MIN_EXPECTED expected). Two latents whose decoders share a direction yet never fire together:
  the absorbed parent falls silent exactly when its child's latent fires; mutually exclusive
  children merged with their parent share the parent direction and never co-fire.
- exclusive_miss: max over neighbours k of max(c_jk, 0) x exclusion_jk x n_k / (n_j + n_k), with n
  the latents' active counts: how much of the shared direction's firings latent j misses by
  falling silent when k fires, as the truth's firing F1 counts it (an absorbed parent whose
  child is rare misses little; one whose child is common misses much).
- active_rate: share of the inputs on which the latent is active. A latent reading minus a feature
  (active wherever the feature is absent: a genuine local minimum) or merging several is active far
  more often than one feature fires.
- decoder_overlap: max_k |c_jk|: hedging and merging lean a decoder towards directions other
  latents carry (clean latents of independent features are near orthogonal).
- decoder_negative: max_k max(-c_jk, 0): a decoder that subtracts another latent's direction (the
  tied absorbed parent, parent - child; Matryoshka outer latents, child - parent).
- weak_with_partner: max over neighbours k of max(c_jk, 0) x the share of j's weak firings (the band of
  weak_firing_share) on which k is active, times weak_firing_share: so the share of all j's firings
  that are weak while k is active. Partial absorption: an untied parent latent that still fires, at a
  quarter of its strength, when its child's latent (which decodes part of the parent) fires. Those
  weak firings are explained by the partner; the parent still detects its feature. (Without the last
  factor a fully absorbed parent, silent when its child fires but for a few noise-level firings, read
  as just as explained as one that keeps firing: every one of its few weak firings has the child.)
- partner_fires_weak: max over neighbours k of max(c_jk, 0) x the share of j's active inputs on which k
  fires weakly. The other side of the same pair: j is the child latent whose decoder carries part of
  k's direction, so k only has the remainder left to write when j fires.
- cofire_overlap: max over neighbours k of |c_jk| x the share of j's active inputs on which k is active.
  Two latents writing overlapping directions on the same inputs: a child latent that decodes part of its
  parent while the parent's latent fires beside it (the tied and Matryoshka kind, with one clean peak and
  no weak firings), a hedging latent. Clean latents of near-orthogonal features overlap little, and
  latents of independent features co-fire only at the other's rate.

Neighbours: each latent's NEIGHBOURS latents with the largest |c_jk|, made symmetric; pair statistics
are kept only for those pairs, so memory and time grow as K x NEIGHBOURS, not K^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .peaks import PeakModel, count_peaks

ACTIVE_SHARE = 0.2
"""A latent is active on an input when it reaches this fraction of its max (the peak floor)."""
PEAK_SEPARATION = 0.15
"""A peak counts as separate from the main one when their means differ by this fraction of the main's."""
WEAK_LOW, WEAK_HIGH = 0.1, 0.5
"""weak_firing_share counts firings between these fractions of the main peak's mean."""
NEIGHBOURS = 8
"""Pairs per latent whose co-activation is counted: its most overlapping decoders."""
MIN_EXPECTED = 5.0
"""Expected co-activations (under independence) below this: too few to call two latents exclusive."""
LARGE_SAE = 512
"""Above this many latents the peak models are fitted in parallel, on fewer activations each and with a
cheaper EM (wide_peak_model)."""
LARGE_SAE_SAMPLES = 2000
LARGE_SAE_FIT = {"init": "k-means++", "tol": 1e-2}
"""EM start and tolerance of a wide SAE's mixture fits: 0.026 s a fit of 2000 activations against 0.061 s
with the default k-means start and tol 1e-3 (the same peak counts on 20 two-peak latents). The
detection benchmark measures the verdicts' agreement with the uncapped fits (docs/detection.md)."""
SIGNALS = (
    "peak_separated_weight",
    "peak_spread",
    "weak_firing_share",
    "encoder_decoder_gap",
    "encoder_turn",
    "exclusive_overlap",
    "exclusive_miss",
    "active_rate",
    "decoder_overlap",
    "decoder_negative",
    "weak_with_partner",
    "partner_fires_weak",
    "cofire_overlap",
)
"""Every signal, in the order the score's weights list them."""


def unit_rows(a_KD: np.ndarray) -> np.ndarray:
    a = np.asarray(a_KD, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)


def neighbour_pairs(W_dec_KD: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """[P, 2] latent pairs (a < b): each latent with its `neighbours` most overlapping decoders."""
    K = W_dec_KD.shape[0]
    if K < 2:
        return np.zeros((0, 2), dtype=np.int64)
    U = unit_rows(W_dec_KD)
    m = min(neighbours, K - 1)
    pairs = []
    for start in range(
        0, K, 1024
    ):  # blocks of rows: a K x K cosine table is never held for large K
        c = np.abs(U[start : start + 1024] @ U.T)
        rows = np.arange(c.shape[0])
        c[rows, start + rows] = -1.0
        top = np.argpartition(-c, m - 1, axis=1)[:, :m]
        pairs.append(np.stack([np.repeat(start + rows, m), top.ravel()], axis=1))
    p = np.sort(np.concatenate(pairs), axis=1)
    return np.unique(p, axis=0)


class CoActivation:
    """Exact counts, over a stream of activation chunks, of each latent being active and of each
    neighbour pair being active together. `active_K`: the per-latent activity thresholds; `weak_K2`:
    each latent's weak-firing band [low, high) (weak_band), when given also counted: each latent's weak
    firings and, per pair, one latent weak while the other is active."""

    def __init__(
        self, pairs_P2: np.ndarray, active_K: np.ndarray, weak_K2: np.ndarray | None = None
    ):
        self.pairs_P2 = pairs_P2
        self.active_K = np.asarray(active_K, dtype=np.float32)
        # without weak bands, an empty band [inf, inf): no firing is weak
        self.weak_K2 = np.full((len(active_K), 2), np.inf, np.float32)
        if weak_K2 is not None:
            self.weak_K2[:] = weak_K2
        self.rows = 0
        self.active_counts_K = np.zeros(len(active_K), dtype=np.int64)
        self.pair_counts_P = np.zeros(len(pairs_P2), dtype=np.int64)
        self.weak_counts_K = np.zeros(len(active_K), dtype=np.int64)
        self.weak_pair_counts_P2 = np.zeros((len(pairs_P2), 2), dtype=np.int64)
        """Column 0: a weak while b is active; column 1: b weak while a is active (pairs a < b)."""
        # the pairs indexed by each member, for the compiled count
        self._by_a = _pairs_by(pairs_P2[:, 0], len(active_K))
        self._by_b = _pairs_by(pairs_P2[:, 1], len(active_K))

    def add(self, h_BK: np.ndarray) -> None:
        self.rows += h_BK.shape[0]
        _count_chunk(
            np.ascontiguousarray(h_BK, dtype=np.float32),
            self.active_K,
            self.weak_K2,
            self.pairs_P2,
            *self._by_a,
            *self._by_b,
            self.active_counts_K,
            self.pair_counts_P,
            self.weak_counts_K,
            self.weak_pair_counts_P2,
        )

    def exclusion_P(self) -> np.ndarray:
        """1 - observed / expected co-activations per pair, in [0, 1]; 0 where too few are expected."""
        if self.rows == 0 or len(self.pairs_P2) == 0:
            return np.zeros(len(self.pairs_P2))
        n = self.active_counts_K.astype(np.float64)
        expected = n[self.pairs_P2[:, 0]] * n[self.pairs_P2[:, 1]] / self.rows
        ratio = np.divide(
            self.pair_counts_P, expected, out=np.ones_like(expected), where=expected > 0
        )
        return np.where(expected >= MIN_EXPECTED, np.clip(1.0 - ratio, 0.0, 1.0), 0.0)


def _pairs_by(member_P: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the pairs by one member: latent j's pairs are order[start[j]:start[j + 1]]."""
    order = np.argsort(member_P, kind="stable")
    start = np.zeros(K + 1, dtype=np.int64)
    np.cumsum(np.bincount(member_P, minlength=K), out=start[1:])
    return start, order


@numba.njit(cache=True, nogil=True)
def _count_chunk(
    h_BK, active_K, weak_K2, pairs_P2, start_a, order_a, start_b, order_b,
    active_counts_K, pair_counts_P, weak_counts_K, weak_pair_counts_P2,
):  # fmt: skip
    """`CoActivation.add`, row by row: the row's active and weak latents are listed and stamped, then
    each listed latent's pairs look their partner's stamp up (work ~ active latents x neighbours a
    row, where the masks and their sparse product cost ~ K and ~ active^2)."""
    B, K = h_BK.shape
    stamp_on = np.full(K, -1, np.int64)  # the last row where the latent was active
    on = np.empty(K, np.int64)
    weak = np.empty(K, np.int64)
    for r in range(B):
        n_on, n_weak = 0, 0
        for j in range(K):
            v = h_BK[r, j]
            if v > 0:
                if v >= active_K[j]:
                    on[n_on] = j
                    n_on += 1
                    stamp_on[j] = r
                if v >= weak_K2[j, 0] and v < weak_K2[j, 1]:
                    weak[n_weak] = j
                    n_weak += 1
        for i in range(n_on):
            j = on[i]
            active_counts_K[j] += 1
            for q in range(start_a[j], start_a[j + 1]):  # pairs (j, b): both active
                p = order_a[q]
                if stamp_on[pairs_P2[p, 1]] == r:
                    pair_counts_P[p] += 1
        for i in range(n_weak):
            j = weak[i]
            weak_counts_K[j] += 1
            for q in range(start_a[j], start_a[j + 1]):  # pairs (j, b): a weak while b active
                p = order_a[q]
                if stamp_on[pairs_P2[p, 1]] == r:
                    weak_pair_counts_P2[p, 0] += 1
            for q in range(start_b[j], start_b[j + 1]):  # pairs (a, j): b weak while a active
                p = order_b[q]
                if stamp_on[pairs_P2[p, 0]] == r:
                    weak_pair_counts_P2[p, 1] += 1


@dataclass
class PeakSummary:
    separated_weight: float
    spread: float
    weak_share: float


def weak_band(model: PeakModel) -> tuple[float, float]:
    """[WEAK_LOW, WEAK_HIGH) x the main (heaviest) peak's mean: the latent's weak firings; empty
    (inf, inf) for a latent without peaks."""
    if not model.peaks:
        return (np.inf, np.inf)
    main = max(model.peaks, key=lambda p: p.weight).mean
    return (WEAK_LOW * main, WEAK_HIGH * main)


def peak_summary(model: PeakModel, acts: np.ndarray) -> PeakSummary:
    """The peak signals of one latent from its peak model and its (sampled) positive activations."""
    x = np.asarray(acts, dtype=np.float64)
    if not model.peaks:
        return PeakSummary(0.0, 0.0, 0.0)
    main = max(model.peaks, key=lambda p: p.weight)
    above = x[x > model.floor]
    spread = float(above.std() / above.mean()) if above.size >= 2 and above.mean() > 0 else 0.0
    low, high = weak_band(model)
    counted = x[x >= low]
    weak = float((counted < high).mean()) if counted.size else 0.0
    if len(model.peaks) < 2:
        return PeakSummary(0.0, spread, weak)
    total = sum(p.weight for p in model.peaks)
    apart = sum(
        p.weight for p in model.peaks if abs(p.mean - main.mean) >= PEAK_SEPARATION * abs(main.mean)
    )
    return PeakSummary(float(apart / total), spread, weak)


def latent_signals(
    W_enc_DK: np.ndarray,
    W_dec_KD: np.ndarray,
    coactivation: CoActivation,
    peaks: list[PeakSummary],
    tied: bool | None = None,
) -> dict[str, np.ndarray]:
    """Every signal of SIGNALS, one value per latent. `tied` None: tied when W_enc == W_dec^T."""
    W_dec = np.asarray(W_dec_KD, dtype=np.float64)
    W_enc = np.asarray(W_enc_DK, dtype=np.float64)
    K = W_dec.shape[0]
    if tied is None:
        tied = bool(np.allclose(W_enc, W_dec.T, atol=1e-6))
    U = unit_rows(W_dec)
    E = unit_rows(W_enc.T)
    pairs = coactivation.pairs_P2
    a, b = pairs[:, 0], pairs[:, 1]
    c_P = np.einsum("pd,pd->p", U[a], U[b])
    exclusion_P = coactivation.exclusion_P()
    out = {name: np.zeros(K) for name in SIGNALS}
    out["peak_separated_weight"] = np.array([p.separated_weight for p in peaks], dtype=np.float64)
    out["peak_spread"] = np.array([p.spread for p in peaks], dtype=np.float64)
    out["weak_firing_share"] = np.array([p.weak_share for p in peaks], dtype=np.float64)
    out["active_rate"] = coactivation.active_counts_K / max(coactivation.rows, 1)
    if not tied:
        out["encoder_decoder_gap"] = 1.0 - np.einsum("kd,kd->k", E, U)
        # Both directions of each pair: j = a with neighbour b, and j = b with neighbour a.
        turn_ab = c_P - np.einsum("pd,pd->p", E[a], U[b])
        turn_ba = c_P - np.einsum("pd,pd->p", E[b], U[a])
        np.maximum.at(out["encoder_turn"], a, np.clip(turn_ab, 0, None))
        np.maximum.at(out["encoder_turn"], b, np.clip(turn_ba, 0, None))
    n_K = coactivation.active_counts_K.astype(np.float64)
    exclusive_P = np.clip(c_P, 0, None) * exclusion_P
    both = np.maximum(n_K[a] + n_K[b], 1.0)
    np.maximum.at(out["exclusive_miss"], a, exclusive_P * n_K[b] / both)
    np.maximum.at(out["exclusive_miss"], b, exclusive_P * n_K[a] / both)
    positive_P = np.clip(c_P, 0, None)
    weak_K = np.maximum(coactivation.weak_counts_K, 1).astype(np.float64)
    active_K = np.maximum(n_K, 1.0)
    weak_P2 = coactivation.weak_pair_counts_P2
    # j = a weak while b active, j = b weak while a active; then j active while its partner is weak.
    np.maximum.at(out["weak_with_partner"], a, positive_P * weak_P2[:, 0] / weak_K[a])
    np.maximum.at(out["weak_with_partner"], b, positive_P * weak_P2[:, 1] / weak_K[b])
    out["weak_with_partner"] *= out["weak_firing_share"]
    np.maximum.at(out["partner_fires_weak"], b, positive_P * weak_P2[:, 0] / active_K[b])
    np.maximum.at(out["partner_fires_weak"], a, positive_P * weak_P2[:, 1] / active_K[a])
    cofire_P = np.abs(c_P) * coactivation.pair_counts_P
    np.maximum.at(out["cofire_overlap"], a, cofire_P / active_K[a])
    np.maximum.at(out["cofire_overlap"], b, cofire_P / active_K[b])
    for name, value in (
        ("exclusive_overlap", exclusive_P),
        ("decoder_overlap", np.abs(c_P)),
        ("decoder_negative", np.clip(-c_P, 0, None)),
    ):
        np.maximum.at(out[name], a, value)
        np.maximum.at(out[name], b, value)
    return out


def peak_models(samples: list[np.ndarray], seed: int = 0) -> list[PeakModel]:
    """`peak_model` of every latent; a wide SAE (over LARGE_SAE latents) fits at most LARGE_SAE_SAMPLES
    activations a latent and spreads the fits over every core. The single-bump check runs here, in
    one process (about 0.2 ms a latent): only the latents that need the mixture fit go to the workers."""
    if len(samples) <= LARGE_SAE:
        return [peak_model(x, seed=seed) for x in samples]
    import os

    from joblib import Parallel, delayed

    models = [single_peak_model(x) for x in samples]
    todo = [j for j, m in enumerate(models) if m is None]
    fitted = Parallel(n_jobs=min(os.cpu_count() or 1, max(len(todo), 1)), batch_size=16)(
        delayed(wide_peak_model)(samples[j], seed) for j in todo
    )
    for j, model in zip(todo, fitted):
        models[j] = model
    return models


def single_peak_model(acts: np.ndarray) -> PeakModel | None:
    """One Gaussian over the firings above the floor when the smoothed histogram
    (peaks.count_peaks) shows a single bump; None when the mixture fit is needed."""
    from .peaks import MIN_SAMPLES, PEAK_FLOOR, Gaussian, _single_peak_threshold

    x = np.asarray(acts, dtype=np.float64)
    x = x[x > 0]
    if x.size == 0:
        return None
    floor = PEAK_FLOOR * float(x.max())
    above = x[x > floor]
    if above.size < MIN_SAMPLES or count_peaks(x)[0] > 1:
        return None
    only = Gaussian(float(above.mean()), max(float(above.std()), 1e-6 * float(above.mean())), 1.0)
    return PeakModel(
        (only,), (only,), ((0,),), _single_peak_threshold(only, floor), floor, int(above.size)
    )


def peak_model(acts: np.ndarray, seed: int = 0, max_samples: int | None = None, **fit) -> PeakModel:
    """The peak model of one latent, cheaply where it can be: a latent whose smoothed histogram
    shows a single bump gets one Gaussian over its firings above the floor (single_peak_model);
    only the others pay for the BIC mixture fit (0.05-0.3 s a latent). `fit`: init, tol of the EM."""
    from .peaks import fit_peak_model

    single = single_peak_model(acts)
    if single is not None:
        return single
    limit = {} if max_samples is None else {"max_samples": max_samples}
    return fit_peak_model(acts, seed=seed, **limit, **fit)


def wide_peak_model(acts: np.ndarray, seed: int = 0) -> PeakModel:
    """peak_model as a wide SAE's latents get it: at most LARGE_SAE_SAMPLES activations, LARGE_SAE_FIT's EM."""
    return peak_model(acts, seed, LARGE_SAE_SAMPLES, **LARGE_SAE_FIT)


def signals_of(
    W_enc_DK: np.ndarray,
    W_dec_KD: np.ndarray,
    h_BK: np.ndarray,
    models: list[PeakModel] | None = None,
    tied: bool | None = None,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], list[PeakModel]]:
    """Every signal of an SAE from activations held in memory [B, K] (a run's evaluation batch, the
    benchmark's held-out draw); `models`: peak models already fitted, else fitted here."""
    h = np.asarray(h_BK, dtype=np.float32)
    if models is None:
        models = [peak_model(h[:, j], seed=seed) for j in range(h.shape[1])]
    counts = CoActivation(
        neighbour_pairs(W_dec_KD), ACTIVE_SHARE * h.max(0), np.array([weak_band(m) for m in models])
    )
    rows = max(
        1, 2**24 // max(h.shape[1], 1)
    )  # a wide SAE's [B, K] boolean table in pieces of 16M cells
    for start in range(0, h.shape[0], rows):
        counts.add(h[start : start + rows])
    peaks = [peak_summary(m, h[:, j][h[:, j] > 0]) for j, m in enumerate(models)]
    return latent_signals(W_enc_DK, W_dec_KD, counts, peaks, tied), models
