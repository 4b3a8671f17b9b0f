"""A small GPT-style transformer in plain PyTorch: pre-LayerNorm blocks, learned positions, causal attention."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import TransformerConfig


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BLD.shape
        q, k, v = (
            self.qkv(self.ln1(x_BLD))
            .view(B, L, 3, self.heads, D // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        attended = (
            F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, D)
        )
        x_BLD = x_BLD + self.out(attended)
        return x_BLD + self.mlp(self.ln2(x_BLD))


class TinyTransformer(nn.Module):
    def __init__(self, config: TransformerConfig, vocabulary: int, context: int):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(vocabulary, config.width)
        self.position = nn.Embedding(context, config.width)
        self.blocks = nn.ModuleList(Block(config.width, config.heads) for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width)
        self.unembed = nn.Linear(config.width, vocabulary, bias=False)

    def residual(self, tokens_BL: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """The residual stream [B, L, D] after block `layer` (0: the embeddings; None: the last)."""
        layer = len(self.blocks) if layer is None else layer
        x = self.embed(tokens_BL) + self.position(
            torch.arange(tokens_BL.shape[1], device=tokens_BL.device)
        )
        for block in self.blocks[:layer]:
            x = block(x)
        return x

    def forward(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.ln_final(self.residual(tokens_BL)))


@dataclass
class TrainedTransformer:
    model: TinyTransformer
    train_loss: float
    """Mean next-token loss (nats) of the last 50 steps."""
    test_loss: float
    """Next-token loss (nats) on held-out sequences."""
    seconds: float
    """Wall time of the training steps."""
    loss_curve: list[tuple[int, float]]
    """(step, training loss) every 50 steps."""


def next_token_loss(model: TinyTransformer, tokens_BL: torch.Tensor) -> torch.Tensor:
    logits = model(tokens_BL[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens_BL[:, 1:].reshape(-1))


def train_transformer(
    config: TransformerConfig, train_tokens: np.ndarray, test_tokens: np.ndarray, vocabulary: int
) -> TrainedTransformer:
    """Adam with a cosine decay to 10% of lr; batches drawn with a seeded torch.Generator."""
    gen = torch.Generator().manual_seed(config.seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(
        config.seed
    )  # nn.Module initialisers take the global generator; restored below
    model = TinyTransformer(config, vocabulary, train_tokens.shape[1])
    torch.random.set_rng_state(torch_state)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0))),
    )
    data = torch.from_numpy(train_tokens)
    curve, recent = [], []
    start = time.perf_counter()
    for step in range(config.steps):
        batch = data[torch.randint(0, len(data), (config.batch_sequences,), generator=gen)]
        loss = next_token_loss(model, batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 50 == 0 or step == config.steps - 1:
            curve.append((step, loss.item()))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        test = torch.from_numpy(test_tokens)
        test_loss = float(
            np.mean(
                [float(next_token_loss(model, test[i : i + 256])) for i in range(0, len(test), 256)]
            )
        )
    return TrainedTransformer(model, float(np.mean(recent)), test_loss, seconds, curve)


@torch.no_grad()
def residual_activations(model: TinyTransformer, tokens_NL: np.ndarray, layer: int) -> np.ndarray:
    """Residual stream after block `layer` at every token, [N * L, D] float32 (sequence-major)."""
    out = [
        model.residual(torch.from_numpy(tokens_NL[i : i + 256]), layer)
        for i in range(0, len(tokens_NL), 256)
    ]
    x = torch.cat(out)
    return x.reshape(-1, x.shape[-1]).numpy().astype(np.float32)
