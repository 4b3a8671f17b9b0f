"""Hand-derived gradients in feature space: the same losses as `StackedSAE.losses` + `aux_loss`,
without autograd and without ever forming x.

A batch is f_SNB (feature magnitudes, batch last) and x = F^T f. Every product with x goes
through the small matrices W F^T [K, N], and every reduction over the batch is taken before
touching D, so a step costs O(B K (K + N)) rather than O(B K D) plus autograd's bookkeeping.
The code runs on numpy arrays (CPU) or torch tensors (GPU) alike (see backend.py).
`tests/test_fastpath.py` checks these gradients against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .backend import T, clamp_min, norm_last, xp
from .saes import StackedSAE

EPS = 1e-12  # as torch.nn.functional.normalize


@dataclass(frozen=True)
class Architecture:
    """What the gradient formulas need to know of an SAE stack."""

    tied: bool
    l1_weighted_by_decoder_norm: bool
    jumprelu: bool
    learned_threshold: bool
    bandwidth: float

    @classmethod
    def of(cls, sae: StackedSAE) -> "Architecture":
        return cls(sae.architecture == "tied", sae.l1_weighted_by_decoder_norm, sae.config.activation == "jumprelu",
                   sae.log_threshold_SK is not None, sae.jumprelu_bandwidth)


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
    return {name: (p.detach().numpy() if backend == "numpy" else p.detach()) for name, p in sae.named_parameters()}


def loss_and_grads(arch: Architecture, params: dict, geometry: WorldGeometry, f_SNB, l1: float,
                   aux_lambda: float = 0.0, tau_SK=None, want_loss: bool = False):
    """Return (losses if asked, activations h_SKB, d(loss)/d(param) by parameter name).

    loss per SAE = mean_b ||x_hat - x||^2 + l1 * mean_b sum_k w_k h_k + aux_lambda * aux."""
    # Overflow is not an error here: training checks for NaN/inf and stops with a clear message.
    with torch.no_grad(), np.errstate(all="ignore"):
        return _loss_and_grads(arch, params, geometry, f_SNB, l1, aux_lambda, tau_SK, want_loss)


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
    r = P_SKK @ h + (q_SK1 - xW)  # W_dec e: the error seen by each decoder row

    norms_SK = norm_last(W_dec)
    l1_w = norms_SK if arch.l1_weighted_by_decoder_norm else xp(norms_SK).ones_like(norms_SK)
    grad_h = (2.0 / B) * r + (l1 / B) * l1_w[..., None]
    grad_pre = grad_h * gate

    # Decoder: every reduction over the batch happens before anything of size D.
    sum_h = h.sum(-1)
    g_W_dec = (2.0 / B) * ((h @ T(h)) @ W_dec + sum_h[..., None] * b_dec[:, None] - (h @ fT_SBN) @ F)
    g_b_dec = (2.0 / B) * ((sum_h[:, None] @ W_dec)[:, 0] + B * b_dec - f_SNB.sum(-1) @ F)
    if arch.l1_weighted_by_decoder_norm:
        g_W_dec += (l1 / B) * (sum_h / clamp_min(norms_SK, EPS))[..., None] * W_dec

    # Encoder.
    sum_g = grad_pre.sum(-1)
    g_W_enc_SKD = (grad_pre @ fT_SBN) @ F - sum_g[..., None] * b_dec[:, None]
    g_b_dec -= (W_enc @ sum_g[..., None])[..., 0]

    x_sq = x_dot_b = None
    if aux_lambda > 0 or want_loss:
        x_sq = geometry.squared_norms(f_SNB)
        x_dot_b = ((b_dec @ F.T)[:, None] @ f_SNB)[:, 0]
    if aux_lambda > 0:
        r2 = x_sq - 2 * x_dot_b + (b_dec * b_dec).sum(-1)[:, None]  # ||x - b||^2
        gW, gb = _aux_grads(f_SNB, xW - q_SK1, r2, h, tau_SK, W_dec, b_dec, norms_SK, F, aux_lambda)
        g_W_dec += gW
        g_b_dec += gb

    if arch.tied:
        grads = {"W_dec_SKD": g_W_dec + g_W_enc_SKD, "b_dec_SD": g_b_dec}
    else:
        grads = {"W_dec_SKD": g_W_dec, "b_dec_SD": g_b_dec, "W_enc_SDK": T(g_W_enc_SKD), "b_enc_SK": sum_g}
    if arch.learned_threshold:
        theta = threshold[..., None]
        near = abs(pre - theta) < arch.bandwidth / 2
        grads["log_threshold_SK"] = (grad_h * near * (-(theta / arch.bandwidth)) * theta).sum(-1)

    losses = None
    if want_loss:
        # ||e||^2 = h P h + 2 h.q - 2 h.(x W) + ||b||^2 - 2 x.b + ||x||^2
        err = (h * (r + q_SK1 - xW)).sum(1) + (b_dec * b_dec).sum(-1)[:, None] - 2 * x_dot_b + x_sq
        losses = {"mse": err.mean(-1), "l1": (h * l1_w[..., None]).sum(1).mean(-1)}
    return losses, h, grads


def _aux_grads(f, a, r2, h, tau, W_dec, b_dec, norms, F, lam: float):
    """Gradients of lam/(B K) sum [h <= tau] cos(x - b, W_j)^2 w.r.t. W_dec and b_dec, given
    a = (x - b) . W_j and r2 = ||x - b||^2 (h, f batch-last)."""
    K, B = h.shape[1], h.shape[2]
    r = clamp_min(xp(r2).sqrt(clamp_min(r2, 0.0)), EPS)
    n = clamp_min(norms, EPS)[..., None]  # ||W_j||
    cos = a / (r[:, None] * n)
    g = cos * (h <= tau[..., None]) * (2.0 * lam / (B * K))  # dL/dcos (float first: bool * float is float32 in torch)
    c1 = g / (r[:, None] * n)
    sum_c1 = c1.sum(-1)
    g_cos = g * cos
    # dL/dW_j = sum_i c1_ij (x_i - b) - (sum_i g_ij cos_ij) W_j / n_j^2
    gW = (c1 @ T(f)) @ F - sum_c1[..., None] * b_dec[:, None] - (g_cos.sum(-1)[..., None] / (n * n)) * W_dec
    # dL/db = -sum_j (sum_i c1_ij) W_j + sum_i d_i (x_i - b), with d_i = sum_j g_ij cos_ij / r_i^2
    d = g_cos.sum(1) / (r * r)
    gb = -(sum_c1[:, None] @ W_dec)[:, 0] + (d[:, None] @ T(f))[:, 0] @ F - d.sum(-1)[:, None] * b_dec
    return gW, gb

