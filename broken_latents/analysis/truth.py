"""Which latents are broken, by the true features (the ground truth detection is measured against).

A live latent is broken when its decoder's best |cos| with a true feature is below CLEAN_COS, or
when, as a detector of that feature, its firing F1 is below MIN_F1. The latent *fires* on an input
when it writes at least FIRING_SHARE of the feature's mean magnitude (h_j ||W_j|| >= 0.1 m_i); the
feature fires when its magnitude is > 0. The F1 part catches what the cosine misses: an absorbed
parent latent with a clean decoder that falls silent whenever the child fires, and latents that
merge or split a feature. Dead latents (never writing a tenth of the weakest feature's magnitude,
as measure.py's rule) are not broken.
"""

from __future__ import annotations

import numpy as np

from .metrics import CLEAN_COS

MIN_F1 = 0.9
FIRING_SHARE = 0.1


def truth_broken(
    h_BK: np.ndarray,
    W_dec_KD: np.ndarray,
    directions_ND: np.ndarray,
    f_BN: np.ndarray,
    live_K: np.ndarray,
    clean_cos: float = CLEAN_COS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(broken [K] bool, best |cos| [K], firing F1 [K]) for one SAE on inputs x_B = f_BN @ directions_ND."""
    W = np.asarray(W_dec_KD, dtype=np.float64)
    F = np.asarray(directions_ND, dtype=np.float64)
    norms_K = np.linalg.norm(W, axis=1)
    cos_KN = (W / np.maximum(norms_K, 1e-12)[:, None]) @ (
        F / np.linalg.norm(F, axis=1, keepdims=True)
    ).T
    best_K = np.abs(cos_KN).argmax(1)
    best_cos_K = np.abs(cos_KN[np.arange(len(W)), best_K])
    f = np.asarray(f_BN, dtype=np.float64)
    on_BN = f > 0
    mean_mag_N = np.divide(f.sum(0), on_BN.sum(0), out=np.ones(f.shape[1]), where=on_BN.sum(0) > 0)
    writes_BK = np.asarray(h_BK, dtype=np.float64) * norms_K
    f1_K = np.zeros(len(W))
    for j in range(len(W)):
        i = best_K[j]
        fires = writes_BK[:, j] >= FIRING_SHARE * mean_mag_N[i]
        truth = on_BN[:, i]
        tp = float((fires & truth).sum())
        denominator = fires.sum() + truth.sum()
        f1_K[j] = 2 * tp / denominator if denominator else 0.0
    broken = np.asarray(live_K, dtype=bool) & ((best_cos_K < clean_cos) | (f1_K < MIN_F1))
    return broken, best_cos_K, f1_K
