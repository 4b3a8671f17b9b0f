"""The baseline: a tied SAE trained the way a researcher writes it in a notebook.

Plain PyTorch, autograd, torch.optim.Adam, data sampled with torch every step, torch's
default thread count. It draws from the package's worlds (same directions, rates and
magnitudes) so both sides train on the same distribution.
"""

from __future__ import annotations

import math
import time
from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

from broken_latents.config.schema import WorldConfig
from broken_latents.world.model import World

AUX_LAMBDA = 10_000.0
AUX_THRESHOLD_RATIO = 0.7
AUX_WINDOW_BATCHES = 50


class TiedSAE(nn.Module):
    def __init__(self, dim: int, latents: int):
        super().__init__()
        self.W = nn.Parameter(F.normalize(torch.randn(latents, dim), dim=1))
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        h = torch.relu((x - self.b) @ self.W.T)
        return h, h @ self.W + self.b


def sample_batch(world: World, batch: int) -> torch.Tensor:
    fires = torch.rand(batch, world.n_features, device=world.rates_N.device) < world.rates_N
    for rel in world.config.hierarchy:
        assert rel.mode == "force", "the baseline implements the force rule only"
        fires[:, rel.parent] |= fires[:, rel.children].any(dim=1)  # a child switches its parent on
    return (fires * world.magnitudes_N) @ world.directions_ND


def aux_loss(x, h, sae: TiedSAE, recent_maxes: deque) -> torch.Tensor:
    """lambda/(B*K) * sum of cos(x_i - b, W_j)^2 wherever h_ij <= tau_j (silent latents included)."""
    if recent_maxes:
        tau = AUX_THRESHOLD_RATIO * torch.stack(list(recent_maxes)).amax(dim=0)
    else:
        tau = torch.zeros(h.shape[1], device=h.device)
    cos = F.normalize(x - sae.b, dim=1) @ F.normalize(sae.W, dim=1).T
    return AUX_LAMBDA / h.numel() * ((h <= tau) * cos.pow(2)).sum()


def run_baseline(
    world_config: WorldConfig,
    latents: int,
    samples: int,
    aux: bool,
    l1: float = 3e-3,
    batch_size: int = 1024,
    device: str = "cpu",
) -> float:
    """Train one tied SAE on `samples` samples; return samples/s of the training loop alone."""
    torch.manual_seed(0)
    world = World.build(world_config).to(device)
    sae = TiedSAE(world_config.dim, latents).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    recent_maxes = deque(maxlen=AUX_WINDOW_BATCHES)
    steps = math.ceil(samples / batch_size)

    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        x = sample_batch(world, batch_size)
        h, x_hat = sae(x)
        loss = (x_hat - x).pow(2).sum(dim=1).mean() + l1 * h.sum(dim=1).mean()
        if aux:
            loss = loss + aux_loss(x, h, sae, recent_maxes)
            recent_maxes.append(h.detach().amax(dim=0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def _sync(device: str) -> None:
    """CUDA runs asynchronously: wait for it so the clock sees the work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
