"""Training SAEs on stored activations: the world loop (training/loop.py `run_training`) and its engines,
on the file's rows.

The rows are a world to the loop (`world.activations.StoredActivations`): the engines train on the
inputs x, as they do for sparse worlds, with every SAE's declared terms, the aux loss with its schedule
(mixture thresholds refitted on a second shuffled stream of training rows), Matryoshka prefixes, any
architecture and activation, and the inverse technique (its peak directions refitted on that stream
too). Every seed sees the same batches (one stream seeded by train.first_seed); seeds differ in their
SAEs' initialisation.

`train_run` is the one call that trains either world (stored rows here, else the sampled world of
training/loop.py `train`): the pipeline, after `pipeline.resolve.check_trainable`, calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .engines import TrainedStack, choose_engine
from .loop import TrainResult, new_stacks, run_training, single_torch_thread, train
from ..config.schema import ConfigError, ExperimentConfig
from ..language.cache import ensure_built
from ..world.activations import ActivationFile, StoredActivations, read_directions, read_labels


@dataclass
class ActivationsTrainResult(TrainResult):
    """The loop's result, with the file and its split at hand for the measurement."""

    @property
    def source(self) -> ActivationFile:
        return self.world.source

    @property
    def train_rows(self) -> range:
        return self.world.train_rows

    @property
    def test_rows(self) -> range:
        return self.world.test_rows


def train_run(
    config: ExperimentConfig, device: str, progress: bool, stored: StoredActivations | None
) -> TrainResult:
    """Train every [[sae]] of `config` on its world: the stored rows (`stored`, as
    `pipeline.resolve.check_trainable` opened them, else opened here) or the sampled world."""
    if config.world.activations is None:
        return train(config, device=device, progress=progress)
    return train_on_activations(config, device=device, progress=progress, stored=stored)


def check_activations(config: ExperimentConfig) -> StoredActivations:
    """What refuses an activations run's file before it trains: the file, its labels and directions
    (shapes, NaN), and a batch larger than its training rows. Returns the rows opened once and split,
    as the world to train on. (The engine is `choose_engine`'s to refuse, as on every world:
    `pipeline.resolve.check_trainable` asks both.)"""
    world = config.world
    ensure_built(world, progress=True)  # a registered language world's files, built once
    source = ActivationFile.open(world.activations, world.activations_key)
    labels = read_labels(world.labels, source.n) if world.labels is not None else None
    given = read_directions(world.directions, source.dim) if world.directions is not None else None
    if labels is not None and given is not None and len(given) != labels.shape[1]:
        raise ConfigError(
            "world.directions",
            f"{world.directions} has {len(given)} directions and {world.labels} "
            f"{labels.shape[1]} label columns; give one per concept",
        )
    stored = StoredActivations(source, world.held_out)
    if len(stored.train_rows) < config.train.batch_size:
        raise ConfigError(
            "train.batch_size",
            f"{config.train.batch_size} is more than the {len(stored.train_rows)} training "
            f"rows of {source.path}; lower it",
        )
    return stored


def train_on_activations(
    config: ExperimentConfig,
    device: str = "cpu",
    progress: bool = True,
    stored: StoredActivations | None = None,
) -> ActivationsTrainResult:
    """Train every [[sae]] of `config` on `config.world.activations` (or on `stored`, already checked)."""
    if stored is None:
        stored = check_activations(config)
    # The engine reads the input width from the config (the inverse technique's directions): the file's.
    config = replace(config, world=replace(config.world, dim=stored.dim))
    with single_torch_thread(device):
        stacks = new_stacks(config, stored.dim, device)
        _centre_decoder_bias(stacks, torch.from_numpy(stored.mean_D))
        result = run_training(
            config, stored, stacks, choose_engine(config, device), device, progress
        )
    return ActivationsTrainResult(**vars(result))


@torch.no_grad()
def _centre_decoder_bias(stacks: list[TrainedStack], mean_D: torch.Tensor) -> None:
    """Start b_dec at the activations' mean: real residual streams sit far from the origin, and an SAE
    started at 0 spends its first steps (and its latents' first firings) learning the offset."""
    for stack in stacks:
        stack.sae.b_dec_SD.copy_(mean_D.expand_as(stack.sae.b_dec_SD))
