"""broken-latents: SAEs, feature co-occurrence and broken latents in toy worlds.

    import broken_latents as bl
    run = bl.load_run("runs/recap-absorption")     # config, world, saes[label][seed], metrics, history
    result = bl.train("recap-absorption", seeds=2, samples=2_000_000)
    metrics = bl.analyse(result)                     # typed metrics.json
    run = bl.run("recap-absorption", "runs/recap", seeds=2)   # as `broken-latents run`, loaded back
    bl.experiments.EXPERIMENTS                       # the registry
    bl.export_world("synthbench-4k", "worlds/4k")    # a SAELens SyntheticModel folder

The names below load on first use (api.py), so importing the package loads neither torch nor numba."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_API = {"load_run", "load_config", "train", "analyse", "run", "Run", "SAE", "export_world"}
_SUBMODULES = {"experiments"}
__all__ = sorted(_API | _SUBMODULES | {"Metrics", "ConfigError", "__version__"})

if TYPE_CHECKING:
    from . import experiments
    from .api import SAE, Run, analyse, export_world, load_config, load_run, run, train
    from .config.schema import ConfigError
    from .analysis.metrics import Metrics


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "Metrics":
        return importlib.import_module(".analysis.metrics", __name__).Metrics
    if name == "ConfigError":
        return importlib.import_module(".config.schema", __name__).ConfigError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
