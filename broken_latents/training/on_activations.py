"""Training SAEs on stored activations: every [[sae]] x seed in lockstep on one shuffled stream of rows.

The same losses as the world loop (each SAE's declared terms, the aux loss with its schedule,
Matryoshka prefixes, any architecture and activation), by autograd, with the project's flat Adam.
There are no feature firings to hand to the hand-derived kernels, so the engine is autograd.
Every seed sees the same batches (one stream seeded by train.first_seed); seeds differ in their
SAEs' initialisation. The inverse technique needs a world's probe inputs and is refused here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .aux import AuxState
from .engines import TrainedStack
from .history import TrainingHistory
from .loop import (
    LOG_EVERY,
    TrainThroughput,
    _check_finite,
    _progress_bar,
    lr_factor,
    single_torch_thread,
)
from ..config.schema import ConfigError, ExperimentConfig
from ..engine.backend import concat_flat
from ..engine.optim import FlatAdam, flatten_parameters
from ..saes import build_sae, weighted_sum
from ..world.activations import ActivationFile, ShuffledBatches


@dataclass
class ActivationsTrainResult(TrainThroughput):
    config: ExperimentConfig
    source: ActivationFile
    train_rows: range
    test_rows: range
    seeds: list[int]
    stacks: list[TrainedStack]
    samples: int
    train_seconds: float
    history: TrainingHistory = field(default_factory=TrainingHistory)
    """Every loss term per logged step, per SAE and seed: history.json."""


def check_activations(config: ExperimentConfig) -> ActivationFile:
    """Everything that refuses an activations run before it trains: the file, its labels and
    directions (shapes, NaN), and what cannot train on stored rows. Returns the open file."""
    from ..world.activations import read_directions, read_labels

    for sae in config.sae:
        if sae.inverse is not None:
            raise ConfigError(
                f"sae.{sae.label}.inverse",
                "the inverse technique needs a world to draw probe inputs "
                "from; it is not available on stored activations",
            )
    if config.train.engine in ("arrays", "compiled"):
        raise ConfigError(
            "train.engine",
            f"{config.train.engine!r} works on a world's feature firings; on stored "
            "activations use 'auto' or 'autograd'",
        )
    world = config.world
    source = ActivationFile.open(world.activations, world.activations_key)
    if world.labels is not None:
        read_labels(world.labels, source.n)
    if world.directions is not None:
        read_directions(world.directions, source.dim)
    train_rows, _ = source.split(world.held_out)
    if len(train_rows) < config.train.batch_size:
        raise ConfigError(
            "train.batch_size",
            f"{config.train.batch_size} is more than the {len(train_rows)} training "
            f"rows of {source.path}; lower it",
        )
    return source


def train_on_activations(
    config: ExperimentConfig,
    device: str = "cpu",
    progress: bool = True,
    source: ActivationFile | None = None,
) -> ActivationsTrainResult:
    """Train every [[sae]] of `config` on `config.world.activations` (or on `source`, already checked)."""
    if source is None:
        source = check_activations(config)
    with single_torch_thread(device):
        return _train(config, source, config.world.held_out, device, progress)


def _train(config, source, held_out, device, progress) -> ActivationsTrainResult:
    seeds = list(range(config.train.first_seed, config.train.first_seed + config.train.seeds))
    batch = config.train.batch_size
    train_rows, test_rows = source.split(held_out)
    stacks = [
        TrainedStack(sc, build_sae(sc, len(seeds), source.dim, seeds, config.train.init).to(device))
        for sc in config.sae
    ]
    auxes = [
        AuxState(s.config.aux, len(seeds), s.config.latents, torch.zeros) if s.config.aux else None
        for s in stacks
    ]
    _centre_decoder_bias(stacks, source, train_rows)
    parameters = [p for stack in stacks for p in stack.sae.parameters()]
    optimiser = FlatAdam(flatten_parameters(parameters), lr=config.train.lr)
    stream = ShuffledBatches(source, train_rows, batch, config.train.first_seed)
    steps = math.ceil(config.train.samples / batch)
    history = TrainingHistory.empty([stack.config.label for stack in stacks], seeds)
    with _progress_bar(progress, steps * batch) as bar:
        start = time.perf_counter()
        for step in range(steps):
            x_BD = torch.from_numpy(stream.next()).to(device)
            total, logged = 0.0, {}
            for stack, aux in zip(stacks, auxes):
                x_SBD = x_BD.expand(stack.sae.n_saes, -1, -1)
                lam, tau_SK = aux.schedule(step * batch) if aux else (0.0, None)
                terms, h = stack.sae.loss_terms(x_SBD, tau_SK, lam)
                if aux is not None:
                    aux.running_max.update(h.detach().amax(dim=1))
                total = total + weighted_sum(terms).mean(-1).sum()
                logged[stack.config.label] = {
                    name: value.detach().mean(-1) for name, (_, value) in terms.items()
                }
            for p in parameters:
                p.grad = None
            total.backward()
            optimiser.step(
                concat_flat([p.grad for p in parameters]),
                config.train.lr * lr_factor(config, step, steps),
            )
            if config.train.unit_norm_decoder:
                with torch.no_grad():
                    for stack in stacks:
                        W = stack.sae.W_dec_SKD
                        W /= W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            if step % LOG_EVERY == 0 or step == steps - 1:
                samples = (step + 1) * batch
                _check_finite(stacks, logged, seeds, samples, config.train.lr)
                history.record(samples, logged)
                bar.update(samples, time.perf_counter() - start, history.means())
        seconds = time.perf_counter() - start
    for stack, aux in zip(stacks, auxes):
        if aux is not None:
            stack.tau_SK = aux.schedule(steps * batch)[1].to(device)
    return ActivationsTrainResult(
        config, source, train_rows, test_rows, seeds, stacks, steps * batch, seconds, history
    )


@torch.no_grad()
def _centre_decoder_bias(stacks, source: ActivationFile, rows: range, sample: int = 65_536) -> None:
    """Start b_dec at the activations' mean: real residual streams sit far from the origin, and an SAE
    started at 0 spends its first steps (and its latents' first firings) learning the offset."""
    mean_D = torch.from_numpy(source.read(rows.start, min(rows.start + sample, rows.stop)).mean(0))
    for stack in stacks:
        stack.sae.b_dec_SD.copy_(mean_D.expand_as(stack.sae.b_dec_SD))
