"""The thin base every SAE architecture shares: S SAEs of one shape, parameters stacked [S, ...].

Shapes follow SAELens so weights interoperate: W_enc [D, K], W_dec [K, D], b_enc [K],
b_dec [D], each with a leading S. An architecture says how it gets its encoder
(`encoder`), how its L1 is weighted (`l1_weights_SK`) and, if it wants, how it initialises.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..config import SAEConfig


class JumpReLU(torch.autograd.Function):
    """h = pre * [pre > theta]. Gradient to pre as for ReLU above the threshold; gradient to
    theta through the rectangle-kernel pseudo-derivative of Rajamanoharan et al. (2024)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_h):
        pre, threshold = ctx.saved_tensors
        above = pre > threshold
        near = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
        grad_threshold = -(threshold / ctx.bandwidth) * near * grad_h
        grad_threshold = grad_threshold.sum_to_size(threshold.shape) if threshold.requires_grad else None
        return grad_h * above, grad_threshold, None


class StackedSAE(nn.Module):
    architecture: ClassVar[str]
    """Registry name, e.g. "tied"."""
    l1_weighted_by_decoder_norm: ClassVar[bool]
    """Untied SAEs could shrink the L1 by growing decoder rows; weighting by the row norm stops that."""
    jumprelu_bandwidth: ClassVar[float] = 0.05

    def __init__(self, config: SAEConfig, n_saes: int, dim: int, seeds: list[int], init: str):
        super().__init__()
        self.config = config
        self.n_saes, self.dim, self.latents = n_saes, dim, config.latents
        W_dec = torch.stack([initial_decoder(config.latents, dim, seed, config.label, init) for seed in seeds])
        self.W_dec_SKD = nn.Parameter(W_dec)
        self.b_dec_SD = nn.Parameter(torch.zeros(n_saes, dim))
        # A learned JumpReLU threshold only exists without the aux loss, whose tau_j replaces it.
        self.log_threshold_SK = None
        if config.activation == "jumprelu" and config.aux is None:
            self.log_threshold_SK = nn.Parameter(torch.full((n_saes, config.latents), math.log(0.1)))

    # -- the math of the post -------------------------------------------------------------

    def encoder(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_enc_SDK, b_enc_SK)."""
        raise NotImplementedError

    def encode_pre(self, x_SBD: torch.Tensor) -> torch.Tensor:
        W_enc_SDK, b_enc_SK = self.encoder()
        return (x_SBD - self.b_dec_SD[:, None]) @ W_enc_SDK + b_enc_SK[:, None]

    def thresholds(self, tau_SK: torch.Tensor | None) -> torch.Tensor | None:
        """JumpReLU thresholds: learned, or the aux loss's tau_j; None for ReLU."""
        if self.config.activation == "relu":
            return None
        return tau_SK if self.log_threshold_SK is None else self.log_threshold_SK.exp()

    def activate(self, pre_SBK: torch.Tensor, tau_SK: torch.Tensor | None = None) -> torch.Tensor:
        threshold = self.thresholds(tau_SK)
        if threshold is None:  # ReLU, or an aux-thresholded JumpReLU before any tau exists
            return torch.relu(pre_SBK)
        return JumpReLU.apply(pre_SBK, threshold[:, None], self.jumprelu_bandwidth)

    def decode(self, h_SBK: torch.Tensor) -> torch.Tensor:
        return h_SBK @ self.W_dec_SKD + self.b_dec_SD[:, None]

    def l1_weights_SK(self) -> torch.Tensor:
        if self.l1_weighted_by_decoder_norm:
            return self.W_dec_SKD.norm(dim=-1)
        return torch.ones(self.n_saes, self.latents, device=self.W_dec_SKD.device)

    def forward(self, x_SBD: torch.Tensor, tau_SK: torch.Tensor | None = None):
        h = self.activate(self.encode_pre(x_SBD), tau_SK)
        return h, self.decode(h)

    # -- named losses (means over the batch, one value per SAE) ---------------------------

    def losses(self, x_SBD: torch.Tensor, tau_SK: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h, x_hat = self(x_SBD, tau_SK)
        mse = (x_hat - x_SBD).pow(2).sum(-1).mean(-1)
        l1 = (h * self.l1_weights_SK()[:, None]).sum(-1).mean(-1)
        return {"mse": mse, "l1": l1, "h": h}

    # -- export ---------------------------------------------------------------------------

    @torch.no_grad()
    def saelens_state(self, s: int) -> dict[str, torch.Tensor]:
        W_enc_SDK, b_enc_SK = self.encoder()
        return {
            "W_enc": W_enc_SDK[s].contiguous().clone(),
            "W_dec": self.W_dec_SKD[s].contiguous().clone(),
            "b_enc": b_enc_SK[s].contiguous().clone(),
            "b_dec": self.b_dec_SD[s].contiguous().clone(),
        }


def initial_decoder(latents: int, dim: int, seed: int, label: str, init: str) -> torch.Tensor:
    """Unit-norm decoder rows: Gaussian directions, or orthonormal ones where latents <= dim.

    Seeded by (seed, label) so an SAE's start does not depend on which others train beside it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + sum(ord(c) * 31**i for i, c in enumerate(label)) % 1_000_003)
    W = torch.randn(latents, dim, generator=gen, dtype=torch.float64)
    if init == "orthogonal" and latents <= dim:
        q, _ = torch.linalg.qr(W.T)
        W = q.T
    return torch.nn.functional.normalize(W, dim=1).float()
