"""Experiments: the registry's mechanics (registry.py), the post's declarations (post.py), its open
questions carried forward (matryoshka.py), the checks their claims are made of (checks.py) and how
claims are evaluated across seeds (claims.py)."""

from . import post  # noqa: F401  (registers the post's experiments)
from . import matryoshka  # noqa: F401  (then the Matryoshka experiments)
from . import synthbench  # noqa: F401  (then the scale studies)
from . import language  # noqa: F401  (then SAEs on the language world's transformer)
from .post import narrow_world
from .registry import EXPERIMENTS, Experiment, get, register

__all__ = ["EXPERIMENTS", "Experiment", "get", "narrow_world", "register"]
