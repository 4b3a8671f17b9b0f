"""Language worlds built on demand: a registered experiment names the activation files of a language
world by its config's hash under the cache folder; the pipeline builds them the first time a run
reads them (a fresh clone builds once, later runs reuse the files).

Cache folder: $BROKEN_LATENTS_CACHE, else ~/.cache/broken-latents.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from .config import LanguageConfig

BUILD_VERSION = 2
"""Part of the folder's hash: a change to what a build writes (2: directions beyond the parent) builds anew."""
BUILDERS: dict[str, LanguageConfig] = {}
"""Activations path -> the language world that writes it."""


def cache_dir() -> Path:
    return Path(os.environ.get("BROKEN_LATENTS_CACHE", Path.home() / ".cache" / "broken-latents"))


def world_folder(config: LanguageConfig) -> Path:
    """Where `config`'s world is (or will be) built: one folder per distinct config."""
    digest = hashlib.sha256(
        json.dumps([BUILD_VERSION, asdict(config)], sort_keys=True).encode()
    ).hexdigest()[:12]
    return cache_dir() / f"language-{config.name}-{digest}"


def files_of(config: LanguageConfig) -> dict[str, str]:
    """The [world] keys of an SAE run on `config`'s world (activations, labels, directions), registered
    so that `ensure_built` can build them."""
    folder = world_folder(config)
    # The run computes the directions from the labels on its own training rows (as directions.npy, on all rows).
    files = {"activations": str(folder / "activations.npy"), "labels": str(folder / "labels.npy")}
    BUILDERS[files["activations"]] = config
    return files


def ensure_built(world, progress: bool = False) -> None:
    """Build the language world behind `world.activations` if it is a registered one not built yet."""
    config = BUILDERS.get(str(world.activations))
    if config is None or Path(world.activations).exists():
        return
    from .build import build_language

    if progress:
        print(
            f"building the language world {config.name!r} into {world_folder(config)} (once)",
            flush=True,
        )
    build_language(config, world_folder(config), progress=progress)
