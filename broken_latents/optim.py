"""Adam over one flat buffer holding every parameter: a handful of kernels per step, where
torch.optim.Adam's per-tensor bookkeeping costs more than the toy SAEs' whole gradient."""

from __future__ import annotations

import torch

from .backend import xp, zeros_like


def flatten_parameters(params: list[torch.Tensor]) -> torch.Tensor:
    """Move the parameters into one contiguous buffer; each parameter becomes a view of it."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


class FlatAdam:
    """PyTorch's Adam (same formula, same defaults) on a flat buffer, numpy or torch, in place."""

    def __init__(self, flat, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.flat, self.lr = flat, lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = zeros_like(flat)
        self.exp_avg_sq = zeros_like(flat)
        self.denom = zeros_like(flat)
        self.steps = 0

    def step(self, grad, lr: float | None = None) -> None:
        self.steps += 1
        lr = self.lr if lr is None else lr
        self.exp_avg *= self.beta1
        self.exp_avg += (1 - self.beta1) * grad
        self.exp_avg_sq *= self.beta2
        self.exp_avg_sq += (1 - self.beta2) * grad * grad
        xp(self.flat).sqrt(self.exp_avg_sq, out=self.denom)
        self.denom /= (1 - self.beta2**self.steps) ** 0.5
        self.denom += self.eps
        self.flat -= (lr / (1 - self.beta1**self.steps)) * self.exp_avg / self.denom
