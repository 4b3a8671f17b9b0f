"""Adam over one flat buffer holding every parameter: a handful of kernels per step, where
torch.optim.Adam's per-tensor bookkeeping costs more than the toy SAEs' whole gradient."""

from __future__ import annotations

import torch


def flatten_parameters(params: list[torch.Tensor]) -> torch.Tensor:
    """Move the parameters into one contiguous buffer; each parameter becomes a view of it."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


class FlatAdam:
    """PyTorch's Adam (same formula, same defaults) on a flat parameter buffer."""

    def __init__(self, flat: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.flat, self.lr = flat, lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.denom = torch.empty_like(flat)
        self.steps = 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: float | None = None) -> None:
        self.steps += 1
        lr = self.lr if lr is None else lr
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias2_sqrt = (1 - self.beta2**self.steps) ** 0.5
        torch.sqrt(self.exp_avg_sq, out=self.denom).div_(bias2_sqrt).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg, self.denom, value=-lr / (1 - self.beta1**self.steps))
