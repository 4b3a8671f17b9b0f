"""Adam over one flat buffer holding every parameter: a handful of kernels per step, where
torch.optim.Adam's per-tensor bookkeeping costs more than the toy SAEs' whole gradient."""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .backend import is_numpy, xp, zeros_like


def flatten_parameters(params: list[torch.Tensor]) -> torch.Tensor:
    """Move the parameters into one contiguous buffer; each parameter becomes a view of it."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def split_like(flat, shapes: list) -> list:
    """Views of `flat` with the given shapes, in order (as `flatten_parameters` lays them out)."""
    views, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return views


ADAM_CHUNK = 1 << 16
"""Elements per chunk of an update on a pool's two threads (a width-1024 SAE on 256 dims: 9)."""


class FlatAdam:
    """PyTorch's Adam (same formula, same defaults) on a flat buffer, numpy or torch, in place."""

    def __init__(self, flat, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, pool=None):
        self.flat, self.lr = flat, lr
        self.pool = pool
        """A `chunks.ChunkPool` (numpy buffers): the update in chunks on two threads."""
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = zeros_like(flat)
        self.exp_avg_sq = zeros_like(flat)
        self.denom = zeros_like(flat)
        self.steps = 0

    def warm_up(self) -> None:
        """Load (or compile) the compiled update now, on scratch, so no training step pays it."""
        if is_numpy(self.flat):
            scratch = [np.zeros(1, self.flat.dtype) for _ in range(4)]
            _adam_update(*scratch, np.ones(7, self.flat.dtype))

    def step(self, grad, lr: float | None = None) -> None:
        self.steps += 1
        lr = self.lr if lr is None else lr
        step_size = lr / (1 - self.beta1**self.steps)
        bias_correction2_sqrt = (1 - self.beta2**self.steps) ** 0.5
        if is_numpy(self.flat):  # one compiled pass instead of ten array calls
            constants = (self.beta1, 1 - self.beta1, self.beta2, 1 - self.beta2, self.eps)
            constants = np.array(constants + (step_size, bias_correction2_sqrt), self.flat.dtype)
            arrays = (self.flat, grad, self.exp_avg, self.exp_avg_sq)
            if self.pool is None:
                _adam_update(*arrays, constants)
                return
            size = self.flat.shape[0]

            def chunk(i: int) -> None:
                part = slice(i * ADAM_CHUNK, (i + 1) * ADAM_CHUNK)
                _adam_update(*(a[part] for a in arrays), constants)

            self.pool.run(chunk, -(-size // ADAM_CHUNK))
            return
        self.exp_avg *= self.beta1
        self.exp_avg += (1 - self.beta1) * grad
        self.exp_avg_sq *= self.beta2
        self.exp_avg_sq += (1 - self.beta2) * grad * grad
        xp(self.flat).sqrt(self.exp_avg_sq, out=self.denom)
        self.denom /= bias_correction2_sqrt
        self.denom += self.eps
        self.flat -= step_size * self.exp_avg / self.denom


@numba.njit(cache=True, nogil=True)
def _adam_update(flat, grad, exp_avg, exp_avg_sq, constants):
    """FlatAdam.step's formula, element by element, in the buffers' dtype as torch's Adam and the
    torch branch compute (float64 arithmetic on float32 buffers cost twice the time). `constants`:
    beta1, 1 - beta1, beta2, 1 - beta2, eps, step size, sqrt of bias correction 2, in that dtype."""
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bias_correction2_sqrt = (
        constants[0],
        constants[1],
        constants[2],
        constants[3],
        constants[4],
        constants[5],
        constants[6],
    )
    for i in range(flat.shape[0]):
        g = grad[i]
        exp_avg[i] = exp_avg[i] * beta1 + one_minus_beta1 * g
        exp_avg_sq[i] = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g
        denom = math.sqrt(exp_avg_sq[i]) / bias_correction2_sqrt + eps
        flat[i] -= step_size * exp_avg[i] / denom
