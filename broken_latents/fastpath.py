"""Hand-derived gradients in feature space: the same losses as `StackedSAE.losses` + `aux_loss`,
without autograd and without ever forming x.

A batch is f_SBN (feature magnitudes) and x = f F. Every product with x goes through the
small matrices F W_enc [N, K] and W_dec F^T [K, N], and every reduction over the batch is
taken before touching D, so a step costs O(B K (K + N)) rather than O(B K D) plus autograd's
bookkeeping. `tests/test_fastpath.py` checks these gradients against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .saes import StackedSAE

EPS = 1e-12  # as torch.nn.functional.normalize


@dataclass
class WorldGeometry:
    """What the fast path needs of the world: directions F_ND and their Gram matrix."""

    F_ND: torch.Tensor
    G_NN: torch.Tensor
    orthonormal: bool
    """Then ||x||^2 = sum_n f_n^2, without the N x N product."""

    @classmethod
    def of(cls, F_ND: torch.Tensor) -> "WorldGeometry":
        G = F_ND @ F_ND.T
        eye = torch.eye(G.shape[0], device=G.device, dtype=G.dtype)
        return cls(F_ND, G, bool(torch.allclose(G, eye, atol=1e-5)))

    def squared_norms(self, f_SNB: torch.Tensor) -> torch.Tensor:
        """||x||^2 per sample, [S, B]."""
        if self.orthonormal:
            return f_SNB.pow(2).sum(1)
        return ((self.G_NN @ f_SNB) * f_SNB).sum(1)


@torch.no_grad()
def loss_and_grads(
    sae: StackedSAE,
    geometry: WorldGeometry,
    f_SNB: torch.Tensor,
    l1: float,
    aux_lambda: float = 0.0,
    tau_SK: torch.Tensor | None = None,
    want_loss: bool = False,
) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor, dict[str, torch.Tensor]]:
    """Return (losses if asked, activations h_SKB, d(loss)/d(param) by parameter name).

    loss per SAE = mean_b ||x_hat - x||^2 + l1 * mean_b sum_k w_k h_k + aux_lambda * aux.
    Batch-last layout throughout ([S, K, B], [S, N, B]): long contiguous rows keep the CPU's
    small matrix products fast."""
    F = geometry.F_ND
    B = f_SNB.shape[-1]
    W_dec, b_dec = sae.W_dec_SKD, sae.b_dec_SD
    tied = sae.architecture == "tied"
    fT_SBN = f_SNB.transpose(1, 2)

    # x . W_j and b . W_j for every decoder row; a tied encoder needs nothing more.
    M_SKN = W_dec @ F.T
    q_SK1 = W_dec @ b_dec[..., None]
    xW = M_SKN @ f_SNB
    if tied:
        W_enc = W_dec.transpose(1, 2)
        pre = xW - q_SK1  # W (x - b)
    else:
        W_enc, b_enc = sae.encoder()
        A_SKN = W_enc.transpose(1, 2) @ F.T
        c_SK1 = b_enc[..., None] - W_enc.transpose(1, 2) @ b_dec[..., None]
        pre = torch.baddbmm(c_SK1, A_SKN, f_SNB)
    threshold = sae.thresholds(tau_SK)
    gate = pre > (threshold[..., None] if threshold is not None else 0.0)
    h = pre * gate

    P_SKK = W_dec @ W_dec.transpose(1, 2)
    r = torch.baddbmm(q_SK1 - xW, P_SKK, h)  # W_dec e: the error seen by each decoder row

    norms_SK = W_dec.norm(dim=-1)
    l1_w = norms_SK if sae.l1_weighted_by_decoder_norm else torch.ones_like(norms_SK)
    grad_h = (2.0 / B) * r + (l1 / B) * l1_w[..., None]
    grad_pre = grad_h * gate

    # Decoder: every reduction over the batch happens before anything of size D.
    hh_SKK = h @ h.transpose(1, 2)
    sum_h = h.sum(-1)
    hf_SKN = h @ fT_SBN
    sum_f = f_SNB.sum(-1)
    g_W_dec = (2.0 / B) * (hh_SKK @ W_dec + sum_h[..., None] * b_dec[:, None] - hf_SKN @ F)
    g_b_dec = (2.0 / B) * ((sum_h[:, None] @ W_dec)[:, 0] + B * b_dec - sum_f @ F)
    if sae.l1_weighted_by_decoder_norm:
        g_W_dec += (l1 / B) * (sum_h / norms_SK.clamp_min(EPS))[..., None] * W_dec

    # Encoder.
    sum_g = grad_pre.sum(-1)
    g_W_enc_SKD = (grad_pre @ fT_SBN) @ F - sum_g[..., None] * b_dec[:, None]
    g_b_dec -= (W_enc @ sum_g[..., None])[..., 0]

    x_sq = x_dot_b = None
    if aux_lambda > 0 or want_loss:
        x_sq = geometry.squared_norms(f_SNB)
        x_dot_b = ((b_dec @ F.T)[:, None] @ f_SNB)[:, 0]
    if aux_lambda > 0:
        r2 = x_sq - 2 * x_dot_b + b_dec.pow(2).sum(-1)[:, None]  # ||x - b||^2
        gW, gb = _aux_grads(f_SNB, xW - q_SK1, r2, h, tau_SK, W_dec, b_dec, norms_SK, F, aux_lambda)
        g_W_dec += gW
        g_b_dec += gb

    if tied:
        grads = {"W_dec_SKD": g_W_dec + g_W_enc_SKD, "b_dec_SD": g_b_dec}
    else:
        grads = {"W_dec_SKD": g_W_dec, "b_dec_SD": g_b_dec, "W_enc_SDK": g_W_enc_SKD.transpose(1, 2), "b_enc_SK": sum_g}
    if sae.log_threshold_SK is not None:
        theta = threshold[..., None]
        near = ((pre - theta).abs() < sae.jumprelu_bandwidth / 2).to(pre.dtype)
        grads["log_threshold_SK"] = (grad_h * near * (-(theta / sae.jumprelu_bandwidth)) * theta).sum(-1)

    losses = None
    if want_loss:
        # ||e||^2 = h P h + 2 h.q - 2 h.(x W) + ||b||^2 - 2 x.b + ||x||^2
        err = (h * (r + q_SK1 - xW)).sum(1) + b_dec.pow(2).sum(-1)[:, None] - 2 * x_dot_b + x_sq
        losses = {"mse": err.mean(-1), "l1": (h * l1_w[..., None]).sum(1).mean(-1)}
    return losses, h, grads


def _aux_grads(f, a, r2, h, tau, W_dec, b_dec, norms, F, lam: float):
    """Gradients of lam/(B K) sum [h <= tau] cos(x - b, W_j)^2 w.r.t. W_dec and b_dec, given
    a = (x - b) . W_j and r2 = ||x - b||^2 (h, f batch-last)."""
    K, B = h.shape[1], h.shape[2]
    r = r2.clamp_min(0).sqrt().clamp_min(EPS)
    n = norms.clamp_min(EPS)[..., None]  # ||W_j||
    cos = a / (r[:, None] * n)
    g = (2.0 * lam / (B * K)) * (h <= tau[..., None]).to(cos.dtype) * cos  # dL/dcos
    c1 = g / (r[:, None] * n)
    sum_c1 = c1.sum(-1)
    g_cos = g * cos
    # dL/dW_j = sum_i c1_ij (x_i - b) - (sum_i g_ij cos_ij) W_j / n_j^2
    gW = (c1 @ f.transpose(1, 2)) @ F - sum_c1[..., None] * b_dec[:, None] - (g_cos.sum(-1, keepdim=True) / n.pow(2)) * W_dec
    # dL/db = -sum_j (sum_i c1_ij) W_j + sum_i d_i (x_i - b), with d_i = sum_j g_ij cos_ij / r_i^2
    d = g_cos.sum(1) / r.pow(2)
    gb = -(sum_c1[:, None] @ W_dec)[:, 0] + (d[:, None] @ f.transpose(1, 2))[:, 0] @ F - d.sum(-1, keepdim=True) * b_dec
    return gW, gb
