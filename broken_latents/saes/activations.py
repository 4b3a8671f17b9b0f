"""The one registry of activations: `[[sae]] activation` -> how a trained SAE computes h at
inference, what its weights file carries, and its name in SAELens.

Training's SAE (`StackedSAE.activate`), the API's SAE (`api.SAE.encode`), the SAELens reader
(`output.saelens_format.NumpySAE`) and the export (`write_saelens`, the run directory's weights)
all read this table; a new activation is one `Activation` here (plus, if it trains differently
from how it infers, its training rule in `StackedSAE.activate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def keep_largest(a: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    """`a` with all but its `count` largest entries along `dim` set to 0 (gradient flows to the kept ones)."""
    top = a.topk(count, dim=dim)
    return torch.zeros_like(a).scatter(dim, top.indices, top.values)


def _relu(pre: torch.Tensor, threshold: torch.Tensor | None, k: int | None) -> torch.Tensor:
    return torch.relu(pre)


def _above_threshold(
    pre: torch.Tensor, threshold: torch.Tensor | None, k: int | None
) -> torch.Tensor:
    # As SAELens' JumpReLU: ReLU, then the mask (the same as pre * [pre > threshold] for a threshold >= 0).
    return torch.relu(pre) * (pre > threshold)


def _top_k(pre: torch.Tensor, threshold: torch.Tensor | None, k: int | None) -> torch.Tensor:
    return keep_largest(torch.relu(pre), k, dim=-1)


@dataclass(frozen=True)
class Activation:
    name: str
    """The `[[sae]] activation` value."""
    infer: Callable[[torch.Tensor, "torch.Tensor | None", "int | None"], torch.Tensor]
    """h from the pre-activations [..., K] at inference: infer(pre, threshold [K] or None, k)."""
    thresholded: bool
    """Its weights file carries `threshold` [K] (the `threshold` argument of `infer`)."""
    uses_k: bool
    """It keeps a number `k` of latents (`[[sae]] k` is required)."""
    saelens: str
    """The SAELens architecture it is saved as (every one encodes act((x - b_dec) W_enc + b_enc))."""


ACTIVATIONS: dict[str, Activation] = {}
"""Registered activations by name, in registration order."""


def register(activation: Activation) -> Activation:
    if activation.name in ACTIVATIONS:
        raise ValueError(f"activation {activation.name!r} is registered twice")
    ACTIVATIONS[activation.name] = activation
    return activation


register(Activation("relu", _relu, thresholded=False, uses_k=False, saelens="standard"))
register(
    Activation("jumprelu", _above_threshold, thresholded=True, uses_k=False, saelens="jumprelu")
)
register(Activation("topk", _top_k, thresholded=False, uses_k=True, saelens="topk"))
# At inference BatchTopK is a JumpReLU at the threshold estimated in training (StackedSAE.activate),
# so a sample's latents do not depend on the rest of its batch; SAELens saves it as a JumpReLU too.
register(
    Activation("batchtopk", _above_threshold, thresholded=True, uses_k=True, saelens="jumprelu")
)


def activation(name: str) -> Activation:
    """The registered activation `name`; NotImplementedError naming the registry if there is none."""
    if name not in ACTIVATIONS:
        raise NotImplementedError(
            f"activation {name!r}: register it in broken_latents/saes/activations.py "
            f"(registered: {', '.join(ACTIVATIONS)})"
        )
    return ACTIVATIONS[name]


def saelens_architectures() -> dict[str, Activation]:
    """SAELens architecture -> the activation that reads it (the first registered that saves as it):
    standard -> relu, jumprelu -> jumprelu, topk -> topk."""
    readers: dict[str, Activation] = {}
    for act in ACTIVATIONS.values():
        readers.setdefault(act.saelens, act)
    return readers
