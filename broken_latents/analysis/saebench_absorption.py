"""SAEBench's absorption metrics on a concept's logistic-probe direction, as SAEBench computes them.

SAEBench (Karvonen et al. 2025) measures feature absorption (Chanin et al. 2024) with a first-letter
probe; the absorption fraction is Demian Till's. The definitions below follow its code, read at
github.com/adamkarvonen/SAEBench, sae_bench/evals/absorption/: `feature_absorption_calculator.py`
(`FeatureAbsorptionCalculator.calculate_absorption`: per input), `feature_absorption.py` (which inputs),
`k_sparse_probing.py` (which latents are the concept's own) and `main.py` (`_aggregate_results_df`: the
mean). Here a concept plays a first letter and a token a word; this module is our own code.

For one concept with probe weight w and bias b (score(x) = x . w + b, trained on the activations), and
one SAE with latent activations a_k and decoder rows W_k:

    p = w / |w|,   cos_k = cos(W_k, p),   s_k = a_k cos_k   (latent k's part of the probe projection)
    P = x . p                             (the input's own projection: raw x, b_dec not taken out)
    M = the concept's main latents (below);   m = sum_{k in M} s_k
    absorbers: k not in M with cos_k >= 0.1 and s_k > 0; T = the sum of the 3 largest of their s_k

    absorption fraction of the input:
        0                              if m >= P, or T / P < 0.4  (with P <= 0: 0, see below)
        1                              else if m <= 0
        A / (A + m), A = min(T, P - m)  otherwise (clipped to [0, 1])

    full absorption of the input: every main latent has |a_k| < 1e-8, the latent with the largest s_k
    has cos_k >= 0.025, P >= 0, and that latent's s_k / P >= 0.4.

The inputs are the probe's true positives among the held-out rows (concept active by the labels and
score > 0); a concept's value is the mean over them (SAEBench: the sum over words / the number of probe
true positives). Where P <= 0 SAEBench's own test gives 0 (T / P <= 0 < 0.4; P = 0 would divide by zero
there): the fraction is 0 and the input is not fully absorbed.

Main latents (SAEBench's "split features"): an L1-regularised logistic probe on all latents'
activations, one per concept (started at zero; BCE with positive weight #negatives / #positives, L1 0.01 x the mean over
concepts of sum |weights|, Adam lr 0.01 decayed exponentially to 1e-5 over 50 epochs of batches of
4096); for k = 1..10 the k latents of largest weight get a class-balanced logistic regression
(scikit-learn's LogisticRegression(class_weight="balanced"): L2 with C = 1, bias unpenalised; solved
here by Newton's method), scored by F1 (score > 0) on the held-out rows; M is the k-set of the last k
whose F1 beat the best before it by more than 0.03, stopping at the first that did not. The k-sparse
probes train on the SAE's activations on training rows.

Different from this project's own absorption (absorption.py): a probe direction (not the concept's
own direction), the raw projection P (not the latents' sum), thresholds (0.1, 0.4, 3 absorbers), and
main latents from k-sparse probing (not the Hungarian match).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ABSORBER_COS = 0.1
"""A latent can absorb (fraction) only with cos(W_k, p) at least this."""
MAX_ABSORBERS = 3
PROJECTION_SHARE = 0.4
"""The absorbers (or the top latent, full absorption) must carry at least this share of P."""
FULL_TOP_COS = 0.025
"""Full absorption: the top projecting latent's cos(W_k, p) at least this."""
SILENT = 1e-8
"""A main latent with |a_k| below this is silent (SAEBench's EPS)."""
MAX_K = 10
F1_JUMP = 0.03
L1_DECAY = 0.01
PROBE_EPOCHS = 50
PROBE_BATCH = 4096
PROBE_LR, PROBE_END_LR = 0.01, 1e-5
PROBE_WEIGHT_DECAY = 1e-6
NEWTON_STEPS = 25


@dataclass
class SAEBenchAbsorption:
    absorption_fraction: list[float | None]
    """Per concept: mean absorption fraction over its probe true positives (None: there are none)."""
    full_absorption: list[float | None]
    """Per concept: share of its probe true positives that are fully absorbed."""
    main_latents: list[list[int]]
    """Per concept: its main latents (k-sparse probing's split features)."""
    probe_true_positives: list[int]

    def to_json(self) -> dict:
        def mean(values):
            kept = [v for v in values if v is not None]
            return round(float(np.mean(kept)), 6) if kept else None

        return {
            "absorption_fraction": [
                None if v is None else round(v, 6) for v in self.absorption_fraction
            ],
            "full_absorption": [None if v is None else round(v, 6) for v in self.full_absorption],
            "main_latents": self.main_latents,
            "probe_true_positives": self.probe_true_positives,
            "mean_absorption_fraction": mean(self.absorption_fraction),
            "mean_full_absorption": mean(self.full_absorption),
        }


def input_absorption(
    x_BD: np.ndarray,
    acts_BK: np.ndarray,
    W_dec_KD: np.ndarray,
    probe_D: np.ndarray,
    main: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """(absorption fraction [B], fully absorbed [B] bool) of every input, by the module's formulas."""
    x = np.asarray(x_BD, dtype=np.float64)
    a = np.asarray(acts_BK, dtype=np.float64)
    W = np.asarray(W_dec_KD, dtype=np.float64)
    p = np.asarray(probe_D, dtype=np.float64)
    p = p / np.linalg.norm(p)
    cos_K = (W @ p) / np.maximum(np.linalg.norm(W, axis=1), 1e-12)
    s_BK = a * cos_K
    P_B = x @ p
    is_main = np.zeros(len(W), dtype=bool)
    is_main[list(main)] = True
    m_B = s_BK[:, is_main].sum(1)
    candidate_BK = ~is_main & (cos_K >= ABSORBER_COS) & (s_BK > 0)
    ranked = -np.sort(-np.where(candidate_BK, s_BK, 0.0), axis=1)
    T_B = ranked[:, :MAX_ABSORBERS].sum(1)
    positive = P_B > 0
    safe_P = np.where(positive, P_B, 1.0)
    absorbed = positive & (m_B < P_B) & (T_B / safe_P >= PROJECTION_SHARE)
    A_B = np.minimum(T_B, P_B - m_B)
    partial = np.clip(A_B / np.where(A_B + m_B > 0, A_B + m_B, 1.0), 0.0, 1.0)
    fraction = np.where(absorbed, np.where(m_B <= 0, 1.0, partial), 0.0)
    top_B = s_BK.argmax(1)
    silent = (np.abs(a[:, is_main]) < SILENT).all(1)
    full = (
        silent
        & (cos_K[top_B] >= FULL_TOP_COS)
        & (P_B >= 0)
        & (s_BK[np.arange(len(a)), top_B] >= PROJECTION_SHARE * np.where(positive, P_B, np.inf))
    )
    return fraction, full


def saebench_absorption(
    x_BD: np.ndarray,
    acts_BK: np.ndarray,
    W_dec_KD: np.ndarray,
    probe_w_CD: np.ndarray,
    probe_b_C: np.ndarray,
    labels_BC: np.ndarray,
    main: list[list[int]],
) -> SAEBenchAbsorption:
    """Per concept, over the probe's true positives among the rows x_BD (acts_BK the SAE's on them)."""
    x = np.asarray(x_BD, dtype=np.float64)
    scores_BC = x @ np.asarray(probe_w_CD, dtype=np.float64).T + np.asarray(
        probe_b_C, dtype=np.float64
    )
    fractions, fulls, counts = [], [], []
    for c in range(len(probe_w_CD)):
        rows = np.asarray(labels_BC[:, c], dtype=bool) & (scores_BC[:, c] > 0)
        counts.append(int(rows.sum()))
        if not rows.any():
            fractions.append(None)
            fulls.append(None)
            continue
        fraction, full = input_absorption(x[rows], acts_BK[rows], W_dec_KD, probe_w_CD[c], main[c])
        fractions.append(float(fraction.mean()))
        fulls.append(float(full.mean()))
    return SAEBenchAbsorption(fractions, fulls, [list(m) for m in main], counts)


def main_latents(
    acts_train_NK: np.ndarray,
    labels_train_NC: np.ndarray,
    acts_eval_BK: np.ndarray,
    labels_eval_BC: np.ndarray,
    seed: int = 0,
) -> list[list[int]]:
    """Each concept's main latents by SAEBench's k-sparse probing (module docstring)."""
    # One thread: a few hundred small products, where a second thread costs more in hand-offs than it brings
    # (10 s against 2 s for the L1 probe of one SAE on a busy 2-core host).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _main_latents(acts_train_NK, labels_train_NC, acts_eval_BK, labels_eval_BC, seed)
    finally:
        torch.set_num_threads(threads)


def _main_latents(
    acts_train_NK, labels_train_NC, acts_eval_BK, labels_eval_BC, seed: int
) -> list[list[int]]:
    x = torch.from_numpy(np.asarray(acts_train_NK, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels_train_NC, dtype=np.float32))
    ranking_CK = _l1_probe_weights(x, y, seed)
    x_train, y_train = x.double(), y.bool()
    x_eval = torch.from_numpy(np.asarray(acts_eval_BK, dtype=np.float64))
    y_eval = torch.from_numpy(np.asarray(labels_eval_BC, dtype=bool))
    C, K = ranking_CK.shape
    best, chosen = torch.full((C,), -100.0, dtype=torch.float64), [[] for _ in range(C)]
    open_c = list(range(C))  # concepts whose F1 still jumped at the last k
    for k in range(1, min(MAX_K, K) + 1):
        ids_ck = ranking_CK[open_c].topk(k, dim=1).indices
        w_ck, b_c = _balanced_logistic(x_train, y_train[:, open_c], ids_ck)
        scores_cB = (
            torch.einsum("cbk,ck->cb", x_eval[:, ids_ck].permute(1, 0, 2), w_ck) + b_c[:, None]
        )
        f1_c = _f1(scores_cB > 0, y_eval[:, open_c].T)
        jumped = []
        for i, c in enumerate(open_c):
            if f1_c[i] > best[c] + F1_JUMP:
                best[c], chosen[c] = f1_c[i], ids_ck[i].tolist()
                jumped.append(c)
        open_c = jumped
        if not open_c:
            break
    return chosen


@torch.enable_grad()  # the measurement runs under no_grad
def _l1_probe_weights(x_NK: torch.Tensor, y_NC: torch.Tensor, seed: int) -> torch.Tensor:
    """The weights [C, K] of SAEBench's L1-regularised one-vs-rest probe on the latents' activations."""
    generator = torch.Generator().manual_seed(seed)
    N, K = x_NK.shape
    C = y_NC.shape[1]
    positives = y_NC.sum(0)
    pos_weight = (N - positives) / positives.clamp_min(1.0)
    # Zeros, not nn.Linear's random start: over a few dozen latents that start (+-1/sqrt(K)) is as large
    # as what the ~250 Adam steps move, and would rank latents by its noise (at SAEBench's 16k latents
    # it is +-0.008).
    W_CK = torch.zeros(C, K, requires_grad=True)
    b_C = torch.zeros(C, requires_grad=True)
    optimiser = torch.optim.Adam([W_CK, b_C], lr=PROBE_LR, weight_decay=PROBE_WEIGHT_DECAY)
    gamma = math.exp(math.log(PROBE_END_LR / PROBE_LR) / PROBE_EPOCHS)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=gamma)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    for _ in range(PROBE_EPOCHS):
        order = torch.randperm(N, generator=generator)
        for start in range(0, N, PROBE_BATCH):
            rows = order[start : start + PROBE_BATCH]
            optimiser.zero_grad()
            loss = loss_fn(x_NK[rows] @ W_CK.T + b_C, y_NC[rows])
            loss = loss + L1_DECAY * W_CK.abs().sum(-1).mean()
            loss.backward()
            optimiser.step()
        schedule.step()
    return W_CK.detach()


def _balanced_logistic(x_NK: torch.Tensor, y_NC: torch.Tensor, ids_Ck: torch.Tensor):
    """Per concept c, scikit-learn's LogisticRegression(class_weight="balanced", C=1) on the columns
    ids_Ck[c] of x: minimise 0.5 |w|^2 + sum_n s_n logloss_n, s_n = N / (2 N_class(n)), bias free.
    Newton's method with step halving, all concepts at once. Returns (w [C, k], b [C])."""
    C, k = ids_Ck.shape
    N = len(x_NK)
    X_CNk = torch.cat(
        [x_NK[:, ids_Ck].permute(1, 0, 2), torch.ones(C, N, 1, dtype=x_NK.dtype)], dim=2
    )
    y_CN = y_NC.T.to(x_NK.dtype)
    positives = y_CN.sum(1, keepdim=True).clamp(1.0, N - 1.0)
    s_CN = torch.where(y_CN > 0, N / (2 * positives), N / (2 * (N - positives)))
    penalty = torch.ones(k + 1, dtype=x_NK.dtype)
    penalty[-1] = 0.0  # the bias is not penalised

    def margins(theta):
        return (X_CNk @ theta.unsqueeze(-1)).squeeze(-1)

    def loss(z, theta):
        return (s_CN * torch.nn.functional.softplus(torch.where(y_CN > 0, -z, z))).sum(1) + 0.5 * (
            penalty * theta**2
        ).sum(1)

    theta = torch.zeros(C, k + 1, dtype=x_NK.dtype)
    z = margins(theta)
    current = loss(z, theta)
    for _ in range(NEWTON_STEPS):
        q = torch.sigmoid(z)
        grad = ((s_CN * (q - y_CN)).unsqueeze(1) @ X_CNk).squeeze(1) + penalty * theta
        curvature = s_CN * q * (1 - q)
        hessian = (X_CNk * curvature[..., None]).transpose(1, 2) @ X_CNk + torch.diag(
            penalty + 1e-9
        )
        step = torch.linalg.solve(hessian, grad.unsqueeze(-1)).squeeze(-1)
        size = torch.ones(C, 1, dtype=x_NK.dtype)
        for _ in range(20):  # halve where the full step does not lower the loss
            trial_theta = theta - size * step
            trial_z = margins(trial_theta)
            trial = loss(trial_z, trial_theta)
            worse = trial > current
            if not worse.any():
                break
            size = torch.where(worse[:, None], size / 2, size)
        decrease = (current - trial).max()
        theta, z, current = trial_theta, trial_z, trial
        if decrease < 1e-9 * current.abs().max().clamp_min(1.0):
            break
    return theta[:, :k], theta[:, k]


def _f1(predicted_CB: torch.Tensor, truth_CB: torch.Tensor) -> torch.Tensor:
    tp = (predicted_CB & truth_CB).sum(1).double()
    denominator = predicted_CB.sum(1).double() + truth_CB.sum(1).double()
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1.0), torch.zeros_like(tp))
