"""The one registry of SAE architectures: `@register` a class once, look it up by its name."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import StackedSAE

ARCHITECTURES: dict[str, type["StackedSAE"]] = {}
"""Registered architectures by their `architecture` name, in registration order."""


def register(cls: type["StackedSAE"]) -> type["StackedSAE"]:
    """Class decorator: add `cls` under `cls.architecture`. A name registered twice raises, and so
    does a class that does not state `hand_gradients` in its own body (inherited, it would train
    a new architecture with its parent's gradient formulas) or has no `Options` dataclass."""
    name = cls.__dict__.get("architecture")
    if not name:
        raise TypeError(
            f'{cls.__qualname__}: an architecture names itself with `architecture = "..."`'
        )
    if name in ARCHITECTURES:
        raise ValueError(
            f"architecture {name!r} is registered twice: {ARCHITECTURES[name].__qualname__} "
            f"and {cls.__qualname__}"
        )
    if "hand_gradients" not in cls.__dict__:
        raise TypeError(
            f"{cls.__qualname__}: state `hand_gradients` in the class itself (None: autograd only)"
        )
    options = getattr(cls, "Options", None)
    if not (
        dataclasses.is_dataclass(options)
        and "l1_decoder_norm" in {f.name for f in dataclasses.fields(options)}
    ):
        raise TypeError(
            f"{cls.__qualname__}: declare `Options`, a dataclass of the [[sae]] fields it owns, "
            f"with at least `l1_decoder_norm` (its L1's default)"
        )
    ARCHITECTURES[name] = cls
    return cls
