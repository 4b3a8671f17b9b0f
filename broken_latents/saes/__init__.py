"""SAE architectures, one file each, registered once with `@register` (see registry.py)."""

from .base import StackedSAE
from .losses import weighted_sum
from .registry import ARCHITECTURES, register
from .tied import TiedSAE
from .untied import UntiedSAE


def build_sae(config, n_saes: int, dim: int, seeds: list[int], init: str) -> StackedSAE:
    return ARCHITECTURES[config.architecture](config, n_saes, dim, seeds, init)


__all__ = [
    "ARCHITECTURES",
    "StackedSAE",
    "TiedSAE",
    "UntiedSAE",
    "build_sae",
    "register",
    "weighted_sum",
]
