"""Hand-derived gradients in feature space: of the loss terms an SAE declares
(`StackedSAE.loss_terms`: mse, l1 and aux), without autograd and without ever forming x.

A batch is f_SNB (feature magnitudes, batch last) and x = F^T f. Every product with x goes
through the small matrices W F^T [K, N], and every reduction over the batch is taken before
touching D, so a step costs O(B K (K + N)) rather than O(B K D) plus autograd's bookkeeping.
The code runs on torch tensors (the GPU's engine) or numpy arrays alike (see backend.py);
on the CPU, kernel.py computes the same gradients in one compiled call.
`tests/engine/test_fastpath.py` checks these gradients against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .backend import T, clamp_min, norm_last, xp
from ..saes import ARCHITECTURES, StackedSAE

EPS = 1e-12  # as torch.nn.functional.normalize

GRADIENT_FORMULAS = ("tied", "untied")
"""The formulas derived here: what an architecture's `hand_gradients` may name."""
HAND_DERIVED_TERMS = frozenset({"mse", "prefix_mse", "l1", "aux"})
"""The loss terms whose gradients are derived here, with mse's (and prefix_mse's) weight 1."""
HAND_DERIVED_ACTIVATIONS = ("relu", "jumprelu")


def hand_gradients(sae_config) -> str | None:
    """The formulas here that compute the gradients of the SAE `sae_config` describes, or None
    when its architecture declares none, or its activation or a loss term has none derived."""
    sae_class = ARCHITECTURES[sae_config.architecture]
    covered = (
        sae_class.hand_gradients in GRADIENT_FORMULAS
        and sae_config.activation in HAND_DERIVED_ACTIVATIONS
        and set(sae_class.loss_weights(sae_config)) <= HAND_DERIVED_TERMS
    )
    return sae_class.hand_gradients if covered else None


@dataclass(frozen=True)
class Architecture:
    """What the gradient formulas need to know of an SAE stack."""

    tied: bool
    l1_weighted_by_decoder_norm: bool
    jumprelu: bool
    learned_threshold: bool
    bandwidth: float
    widths: tuple[int, ...] | None = None
    """Matryoshka prefixes (more than one), or None for a plain SAE."""

    @classmethod
    def of(cls, sae: StackedSAE) -> "Architecture":
        """Raises for an SAE without hand-derived gradients: no SAE trains with another's."""
        formulas = hand_gradients(sae.config)
        if formulas is None:
            raise ValueError(
                f"SAE {sae.config.label!r} ({sae.architecture}, {sae.config.activation}) has no "
                "hand-derived gradients; train it by autograd"
            )
        widths = sae.config.nested_widths()
        return cls(
            formulas == "tied",
            sae.l1_weighted_by_decoder_norm,
            sae.config.activation == "jumprelu",
            sae.log_threshold_SK is not None,
            sae.jumprelu_bandwidth,
            tuple(widths) if widths else None,
        )

    def nesting(self, K: int) -> tuple[np.ndarray, np.ndarray]:
        """Matryoshka weights: n_k, the number of prefixes that hold latent k [K], and
        N_kj = n_max(k, j), the number that hold both k and j [K, K] (all ones for a plain SAE)."""
        widths = self.widths or (K,)
        n_K = np.array([sum(w > k for w in widths) for k in range(K)], dtype=np.float64)
        return n_K, n_K[np.maximum.outer(np.arange(K), np.arange(K))]


@dataclass
class WorldGeometry:
    """What the fast path needs of the world: directions F_ND and their Gram matrix."""

    F_ND: "np.ndarray | torch.Tensor"
    G_NN: "np.ndarray | torch.Tensor"
    orthonormal: bool
    """Then ||x||^2 = sum_n f_n^2, without the N x N product."""

    @classmethod
    def of(cls, F_ND: torch.Tensor, backend: str = "torch") -> "WorldGeometry":
        G = F_ND @ F_ND.T
        eye = torch.eye(G.shape[0], device=G.device, dtype=G.dtype)
        orthonormal = bool(torch.allclose(G, eye, atol=1e-5))
        if backend == "numpy":
            return cls(F_ND.cpu().numpy(), G.cpu().numpy(), orthonormal)
        return cls(F_ND, G, orthonormal)

    def squared_norms(self, f_SNB):
        """||x||^2 per sample, [S, B]."""
        if self.orthonormal:
            return (f_SNB * f_SNB).sum(1)
        return ((self.G_NN @ f_SNB) * f_SNB).sum(1)


def params_of(sae: StackedSAE, backend: str) -> dict:
    """The stack's parameters as arrays that share memory with the module (numpy views on the CPU)."""
    return {
        name: (p.detach().numpy() if backend == "numpy" else p.detach())
        for name, p in sae.named_parameters()
    }


def loss_and_grads(
    arch: Architecture,
    params: dict,
    geometry: WorldGeometry,
    f_SNB,
    weights: dict[str, float],
    tau_SK=None,
    want_loss: bool = False,
):
    """Return (the mse and l1 (and prefix_mse) terms' batch means if asked, activations h_SKB, d(loss)/d(param) by
    parameter name), for the loss the SAE declares: its terms' weighted sum, averaged over the batch.
    `weights`: `StackedSAE.loss_weights`, by term name."""
    l1, aux_lambda = term_weights(weights)
    # Overflow is not an error here: training checks for NaN/inf and stops with a clear message.
    with torch.no_grad(), np.errstate(all="ignore"):
        return _loss_and_grads(arch, params, geometry, f_SNB, l1, aux_lambda, tau_SK, want_loss)


def term_weights(weights: dict[str, float]) -> tuple[float, float]:
    """(l1, aux lambda) of declared weights that the formulas here cover, else ValueError."""
    if (
        set(weights) - HAND_DERIVED_TERMS
        or weights["mse"] != 1.0
        or weights.get("prefix_mse", 1.0) != 1.0
    ):
        raise ValueError(f"no hand-derived gradients for the loss terms {weights}")
    return weights["l1"], weights.get("aux", 0.0)


def _loss_and_grads(arch, params, geometry, f_SNB, l1, aux_lambda, tau_SK, want_loss):
    F = geometry.F_ND
    B = f_SNB.shape[-1]
    W_dec, b_dec = params["W_dec_SKD"], params["b_dec_SD"]
    fT_SBN = T(f_SNB)

    # x . W_j and b . W_j for every decoder row; a tied encoder needs nothing more.
    M_SKN = W_dec @ F.T
    q_SK1 = W_dec @ b_dec[..., None]
    xW = M_SKN @ f_SNB
    if arch.tied:
        W_enc = T(W_dec)
        pre = xW - q_SK1  # W (x - b)
    else:
        W_enc, b_enc = params["W_enc_SDK"], params["b_enc_SK"]
        pre = (T(W_enc) @ F.T) @ f_SNB + (b_enc[..., None] - T(W_enc) @ b_dec[..., None])
    threshold = None
    if arch.jumprelu:
        threshold = xp(W_dec).exp(params["log_threshold_SK"]) if arch.learned_threshold else tau_SK
    gate = pre > (threshold[..., None] if threshold is not None else 0.0)
    h = pre * gate

    P_SKK = W_dec @ T(W_dec)
    nested = arch.widths is not None
    if nested:
        # Matryoshka: latent k sits in n_k prefixes, k and j together in N_kj = n_max(k,j); the
        # nested loss's gradients are the plain ones with these counts as weights (m = #widths).
        n_np, N_np = arch.nesting(h.shape[1])
        n_K1, N_KK = _like(n_np[:, None], W_dec), _like(N_np, W_dec)
        m = float(len(arch.widths))
        r = (P_SKK * N_KK) @ h + n_K1 * (q_SK1 - xW)  # sum over prefixes of W_dec e_w
    else:
        r = P_SKK @ h + (q_SK1 - xW)  # W_dec e: the error seen by each decoder row

    # Decoder-row norms only where something needs them (a tied SAE's plain L1 does not).
    norms_SK = norm_last(W_dec) if arch.l1_weighted_by_decoder_norm or aux_lambda > 0 else None
    l1_w = norms_SK[..., None] if arch.l1_weighted_by_decoder_norm else 1.0
    grad_h = (2.0 / B) * r + (l1 / B) * l1_w
    grad_pre = grad_h * gate

    x_sq = x_dot_b = None
    if aux_lambda > 0 or want_loss:
        x_sq = geometry.squared_norms(f_SNB)
        x_dot_b = ((b_dec @ F.T)[:, None] @ f_SNB)[:, 0]

    # Every gradient needs sums sum_i c_i (x_i - b) for some per-sample coefficients c: stack the
    # coefficient rows and take them all with one product through f and one through F.
    rows = [h, grad_pre]
    if aux_lambda > 0:
        a = pre if arch.tied else xW - q_SK1  # (x - b) . W_j
        r2 = x_sq - 2 * x_dot_b + (b_dec * b_dec).sum(-1)[:, None]  # ||x - b||^2
        c1, d, g_cos_sum, n = _aux_coefficients(a, r2, h, tau_SK, norms_SK, aux_lambda)
        rows += [c1, d[:, None]]
    rows.append(xp(f_SNB).ones_like(f_SNB[:, :1]))
    C = xp(f_SNB).concatenate(rows, 1)
    sums = C.sum(-1)
    X = (C @ fT_SBN) @ F - sums[..., None] * b_dec[:, None]  # row k: sum_i C_ki (x_i - b)
    K = h.shape[1]
    sum_h, sum_g = sums[:, :K], sums[:, K : 2 * K]

    if nested:
        g_W_dec = (2.0 / B) * (((h @ T(h)) * N_KK) @ W_dec - n_K1 * X[:, :K])
        g_b_dec = (2.0 / B) * (((n_K1[:, 0] * sum_h)[:, None] @ W_dec)[:, 0] - m * X[:, -1])
    else:
        g_W_dec = (2.0 / B) * ((h @ T(h)) @ W_dec - X[:, :K])
        g_b_dec = (2.0 / B) * ((sum_h[:, None] @ W_dec)[:, 0] - X[:, -1])
    g_b_dec = g_b_dec - (W_enc @ sum_g[..., None])[..., 0]
    g_W_enc_SKD = X[:, K : 2 * K]
    if arch.l1_weighted_by_decoder_norm:
        g_W_dec += (l1 / B) * (sum_h / clamp_min(norms_SK, EPS))[..., None] * W_dec
    if aux_lambda > 0:
        # dL/dW_j = sum_i c1_ij (x_i - b) - (sum_i g_ij cos_ij) W_j / n_j^2
        g_W_dec += X[:, 2 * K : 3 * K] - (g_cos_sum / (n * n))[..., None] * W_dec
        # dL/db = -sum_j (sum_i c1_ij) W_j + sum_i d_i (x_i - b)
        g_b_dec += X[:, 3 * K] - (sums[:, None, 2 * K : 3 * K] @ W_dec)[:, 0]

    if arch.tied:
        grads = {"W_dec_SKD": g_W_dec + g_W_enc_SKD, "b_dec_SD": g_b_dec}
    else:
        grads = {
            "W_dec_SKD": g_W_dec,
            "b_dec_SD": g_b_dec,
            "W_enc_SDK": T(g_W_enc_SKD),
            "b_enc_SK": sum_g,
        }
    if arch.learned_threshold:
        theta = threshold[..., None]
        near = abs(pre - theta) < arch.bandwidth / 2
        grads["log_threshold_SK"] = (grad_h * near * (-(theta / arch.bandwidth)) * theta).sum(-1)

    losses = None
    if want_loss:
        # ||e||^2 = h P h + 2 h.q - 2 h.(x W) + ||b||^2 - 2 x.b + ||x||^2
        x_minus_b_sq = (b_dec * b_dec).sum(-1)[:, None] - 2 * x_dot_b + x_sq
        if nested:  # the full width, and the other prefixes: counts n - 1, N - 1, m - 1
            err = (h * (P_SKK @ h + 2 * (q_SK1 - xW))).sum(1) + x_minus_b_sq
            prefix = (h * ((P_SKK * (N_KK - 1)) @ h + 2 * (n_K1 - 1) * (q_SK1 - xW))).sum(1) + (
                m - 1
            ) * x_minus_b_sq
        else:
            err = (h * (r + q_SK1 - xW)).sum(1) + x_minus_b_sq
        losses = {"mse": err.mean(-1), "l1": (h * l1_w).sum(1).mean(-1)}
        if nested:
            losses["prefix_mse"] = prefix.mean(-1)
    return losses, h, grads


def _like(a: np.ndarray, like):
    """The numpy array `a` as an array of `like`'s kind, dtype and device."""
    if isinstance(like, np.ndarray):
        return a.astype(like.dtype)
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def _aux_coefficients(a, r2, h, tau, norms, lam: float):
    """For lam/(B K) sum [h <= tau] cos(x - b, W_j)^2, with cos = a / (r n), a = (x - b) . W_j,
    r = ||x - b||, n = ||W_j||: the coefficients c1 = (dL/dcos) / (r n) [S, K, B] and
    d = sum_j (dL/dcos) cos / r^2 [S, B], sum_i (dL/dcos) cos [S, K], and n."""
    K, B = h.shape[1], h.shape[2]
    inv_r = 1.0 / clamp_min(xp(r2).sqrt(clamp_min(r2, 0.0)), EPS)
    n = clamp_min(norms, EPS)
    scale = inv_r[:, None] / n[..., None]
    cos = a * scale
    g = (
        cos * (h <= tau[..., None]) * (2.0 * lam / (B * K))
    )  # dL/dcos (float first: bool * float is float32 in torch)
    g_cos = g * cos
    return g * scale, g_cos.sum(1) * inv_r * inv_r, g_cos.sum(-1), n
