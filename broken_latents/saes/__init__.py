"""SAE architectures, one file each; ARCHITECTURES is the one registry of them."""

from .base import StackedSAE
from .tied import TiedSAE
from .untied import UntiedSAE

ARCHITECTURES: dict[str, type[StackedSAE]] = {cls.architecture: cls for cls in (TiedSAE, UntiedSAE)}


def build_sae(config, n_saes: int, dim: int, seeds: list[int], init: str) -> StackedSAE:
    return ARCHITECTURES[config.architecture](config, n_saes, dim, seeds, init)


__all__ = ["ARCHITECTURES", "StackedSAE", "TiedSAE", "UntiedSAE", "build_sae"]
