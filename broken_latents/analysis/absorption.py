"""Absorption and hedging, measured against the true features the world knows.

Pure numpy (float64 inside); the caller passes the SAE's activations, so no encoder and no
torch are needed here. Notation, for one SAE on a batch of B inputs:

    f_b,i      magnitude of feature i on input b (0 = not firing); x_b = sum_i f_b,i d_i
    d_i        unit direction of feature i (row i of directions_ND)
    h_b,j      activation of latent j on input b; W_j its decoder row (W_dec[j])
    m(i)       the latent matched to feature i (one-to-one Hungarian matching), if any
    c_b,j(i) = h_b,j (W_j . d_i)      latent j's part of the reconstruction's projection onto d_i
                                      (b_dec is excluded: it is not carried by any latent)
    I_i        the inputs where feature i fires (f_b,i != 0), n_i = |I_i|

A contribution counts as carried only above a float-noise floor, TOL = 1e-6 of the feature's
magnitude on that input: write c+_b,j = c_b,j if c_b,j > TOL |f_b,i| else 0.

absorption[i]  (SAEBench's absorption fraction, with the true feature in place of a probe)

    a_b(i) = sum_{j != m(i)} c+_b,j / sum_j c+_b,j     (a_b(i) = 0 where the denominator is 0)
    absorption[i] = (1 / n_i) sum_{b in I_i} a_b(i)

  - Per-input fractions, averaged (as SAEBench's mean_absorption_fraction_score), not a
    ratio of sums: every input where i fires weighs the same, however large its magnitudes,
    so absorption[i] reads as "on a typical input with i, the share of i that other latents
    carry". In the recap world's absorbed SAE it is P(child | parent) exactly.
  - Only positive contributions count, in both numerator and denominator. A latent that
    writes -d_i onto an input is not carrying i; letting it subtract from the total would
    push the fraction above 1 (a negative matched latent) or below 0 (a negative absorber).
    With positive parts only, 0 <= a_b(i) <= 1 by construction, with no clipping.
  - An input where no latent carries any of d_i (denominator 0) gives a_b(i) = 0: the
    feature is lost there, not absorbed. Such inputs are counted in `unreconstructed[i]`.
  - An unmatched feature has no m(i): whatever of d_i is carried is carried by other
    latents, so a_b(i) = 1 wherever anything is carried (e.g. a child merged into a single
    parent latent).
  - A feature that never fires in the batch (n_i = 0) gives 0, with firing[i] = 0.
  - Unlike SAEBench there are no thresholds (probe cosine >= 0.1, top-3 absorbers, 40% of the
    probe projection): the direction is exact, not a noisy probe. In a superposed world,
    interference (|W_j . d_i| ~ 0.05) therefore adds a small absorption even to clean SAEs.

full_absorption[i]  (SAEBench's full absorption, without its single-latent restriction)

    full_absorption[i] = (1 / n_i) #{ b in I_i : m(i) silent on b,
                                       x_b . d_i > 0,
                                       sum_{j != m(i)} c_b,j >= 1/2 (x_b . d_i) }

  - silent: h_b,m ||W_m|| <= TOL |f_b,i| (h = 0 for ReLU, JumpReLU and TopK); an unmatched
    feature's latent is always silent.
  - "the other latents together carry": the signed sum, i.e. their net projection onto d_i
    (a latent writing -d_i takes away from what the others deliver).
  - x_b . d_i = sum_k f_b,k (d_k . d_i) is the input's own projection (f_b,i when features
    are orthogonal). 0 when i never fires.

hedging[j]  (decoder of latent j along the features that co-occur with its matched feature)

    hedging[j] = sum_{c in C(m^-1(j))} cos(W_j, d_c)

  - C(i) = cooccurring(hierarchy)[i]: i's ancestors and descendants (a parent's children,
    a child's parent). Signed: > 0, the latent carries co-occurring features (hedging, the
    post's merged single latent, or the untied combo latent f0 + f1 matched to the child);
    < 0, its decoder subtracts them (the absorption-like pattern: a tied parent latent whose
    weights take its children out so that it stays quiet when they fire).
  - 0 for a latent that is dead (not in `live`), unmatched, matched to a feature with no
    co-occurring features, or whose decoder row is zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np
from scipy import sparse

TOL = 1e-6
"""Float-noise floor: a latent carries feature i on an input only if it writes more than
TOL times the feature's magnitude there along d_i (float32 SAEs carry ~1e-7 of noise)."""
FULL_ABSORPTION_SHARE = 0.5
"""Full absorption: the other latents carry at least this share of the input's projection."""
TIE = 1e-12
"""Relative slack of the full-absorption threshold: sums that equal it up to rounding reach it."""


@dataclass
class AbsorptionMetrics:
    absorption: list[float]
    """Per feature: mean over inputs where it fires of the share carried by other latents."""
    full_absorption: list[float]
    """Per feature: share of its inputs where its latent is silent and others carry >= half."""
    hedging: list[float]
    """Per latent: sum of decoder cosines with the features co-occurring with its match."""
    firing: list[int]
    """Per feature: number of inputs in the batch where it fires (n_i)."""
    unreconstructed: list[int]
    """Per feature: inputs where it fires but no latent carries any of it (a_b = 0 there)."""

    def to_dict(self) -> dict[str, list]:
        return asdict(self)


def cooccurring(hierarchy: Iterable[Any], n_features: int) -> dict[int, list[int]]:
    """For every feature, the features that co-occur with it by the hierarchy: all its
    ancestors and all its descendants (siblings only co-occur through their parent, so they
    are left out). Relations are objects or dicts with `parent` and `children`
    (config.HierarchyConfig); both modes, force and conditional, make a child co-occur."""
    children_of: dict[int, set[int]] = {i: set() for i in range(n_features)}
    parents_of: dict[int, set[int]] = {i: set() for i in range(n_features)}
    for rel in hierarchy:
        parent = _field(rel, "parent")
        children = list(_field(rel, "children"))
        for feature in (parent, *children):
            if not 0 <= int(feature) < n_features:
                raise ValueError(f"hierarchy feature {feature} outside 0..{n_features - 1}")
        for child in children:
            children_of[int(parent)].add(int(child))
            parents_of[int(child)].add(int(parent))

    def reach(start: int, edges: dict[int, set[int]]) -> set[int]:
        seen: set[int] = set()
        todo = list(edges[start])
        while todo:
            feature = todo.pop()
            if feature not in seen:
                seen.add(feature)
                todo.extend(edges[feature])
        return seen

    return {
        i: sorted((reach(i, parents_of) | reach(i, children_of)) - {i}) for i in range(n_features)
    }


def absorption_metrics(
    h_BK,
    W_dec_KD,
    directions_ND,
    f_BN,
    matched: Mapping[int, int],
    live: Iterable[int],
    cooccur: Mapping[int, Iterable[int]],
    x_proj_BN=None,
) -> AbsorptionMetrics:
    """Absorption, full absorption and hedging of one SAE (formulas in the module docstring).

    h_BK: the SAE's activations on x_B = f_BN @ directions_ND; f_BN: feature magnitudes
    (0 = not firing); matched: feature -> latent, one-to-one (pass every Hungarian match,
    clean or broken: leaving a broken match out makes its feature unmatched, absorption 1
    wherever anything carries it); live: the live latents; cooccur: feature -> co-occurring
    features (see `cooccurring`); x_proj_BN: the inputs' projections x_b . d_i where x is not
    f_BN @ directions_ND (stored activations). Every list in the result is plain Python, JSON-ready."""
    h = np.asarray(h_BK, dtype=np.float64)
    W = np.asarray(W_dec_KD, dtype=np.float64)
    F = np.asarray(directions_ND, dtype=np.float64)
    f = np.asarray(f_BN, dtype=np.float64)
    if h.ndim != 2 or W.ndim != 2 or F.ndim != 2 or f.ndim != 2:
        raise ValueError("h_BK, W_dec_KD, directions_ND and f_BN must be 2-D")
    if not all(np.isfinite(a).all() for a in (h, W, F, f)):
        raise ValueError("h_BK, W_dec_KD, directions_ND and f_BN must be finite")
    (B, K), (N, D) = h.shape, F.shape
    if (np.linalg.norm(F, axis=1) == 0).any():
        raise ValueError("directions_ND has a zero row")
    if W.shape != (K, D) or f.shape != (B, N):
        raise ValueError(
            f"shapes disagree: h {h.shape}, W_dec {W.shape}, directions {F.shape}, f {f.shape}"
        )
    matched = {int(i): int(j) for i, j in matched.items()}
    if any(not 0 <= i < N for i in matched) or any(not 0 <= j < K for j in matched.values()):
        raise ValueError(
            f"matched {matched} names a feature outside 0..{N - 1} or a latent outside 0..{K - 1}"
        )
    if len(set(matched.values())) != len(matched):
        raise ValueError(f"matched {matched} is not one-to-one")
    live_set = {int(j) for j in live}
    if any(not 0 <= j < K for j in live_set):
        raise ValueError(f"live {sorted(live_set)} names a latent outside 0..{K - 1}")

    proj_KN = W @ F.T  # W_j . d_i
    proj_NK = np.ascontiguousarray(proj_KN.T)
    # Feature-major f and the latents' nonzero activations only: per feature, the work is its
    # firings x the latents on there (a latent at 0 contributes c = 0, never carried), not every
    # sample x every latent (4096 features, 1024 latents, 8192 samples: 4-6 s an SAE before, 1.7-4).
    f_NB = np.ascontiguousarray(f.T)
    h_rows = sparse.csr_matrix(h)
    # x_b . d_i only where i fires: x_B = f @ F through the sparse f (never the [B, N] product,
    # nor the N x N Gram matrix: 2 GiB at 16k features); stored activations pass it (their x is
    # not f @ F).
    x_BD = None if x_proj_BN is not None else np.asarray(sparse.csr_matrix(f) @ F)
    norms_K = np.linalg.norm(W, axis=1)
    absorption, full, firing, unreconstructed = [0.0] * N, [0.0] * N, [0] * N, [0] * N
    for i in range(N):
        fires = np.flatnonzero(f_NB[i])
        n = fires.size
        firing[i] = n
        if n == 0:
            continue
        floor_b = TOL * np.abs(f_NB[i, fires])
        on = h_rows[fires]  # the firing inputs' nonzero activations: (input, latent, h) entries
        input_e = np.repeat(np.arange(n), np.diff(on.indptr))
        c_e = on.data * proj_NK[i, on.indices]
        carried_e = np.where(c_e > floor_b[input_e], c_e, 0.0)
        m = matched.get(i)
        others_e = on.indices != m
        total_b = np.bincount(input_e, carried_e, minlength=n)
        by_others_b = np.bincount(input_e[others_e], carried_e[others_e], minlength=n)
        has = total_b > 0
        share_b = np.divide(by_others_b, total_b, out=np.zeros(n), where=has)
        absorption[i] = float(share_b.mean())
        unreconstructed[i] = int((~has).sum())

        silent_b = np.ones(n, dtype=bool) if m is None else h[fires, m] * norms_K[m] <= floor_b
        target_b = x_BD[fires] @ F[i] if x_BD is not None else x_proj_BN[fires, i]
        net_others_b = np.bincount(input_e[others_e], c_e[others_e], minlength=n)
        # a tie with the threshold counts: the others' sum rounds differently in another latent order
        reach_b = net_others_b >= (FULL_ABSORPTION_SHARE - TIE) * target_b
        fully = silent_b & (target_b > 0) & reach_b
        full[i] = float(fully.mean())

    hedging = [0.0] * K
    direction_norms_N = np.linalg.norm(F, axis=1)
    for i, j in matched.items():
        partners = [int(c) for c in cooccur.get(i, ())]
        if j in live_set and partners and norms_K[j] > 0:
            hedging[j] = float(
                (proj_KN[j, partners] / direction_norms_N[partners]).sum() / norms_K[j]
            )
    return AbsorptionMetrics(absorption, full, hedging, firing, unreconstructed)


def _field(rel: Any, name: str):
    return rel[name] if isinstance(rel, Mapping) else getattr(rel, name)
