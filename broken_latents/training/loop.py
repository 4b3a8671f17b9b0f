"""One `train(...)`: every SAE of an experiment (variants x seeds) in lockstep on one data stream per seed."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .engines import Engine, TrainedStack, choose_engine
from .history import TrainingHistory
from .termination import termination
from ..config.schema import ExperimentConfig
from ..engine.backend import as_torch
from ..saes import build_sae
from ..world.model import World
from ..world.stream import DataStream

LOG_EVERY = 200  # steps between loss logs, NaN checks and progress updates


class TrainingDiverged(RuntimeError):
    def __init__(self, label: str, seed: int, samples: int, lr: float):
        super().__init__(
            f"train.lr: loss of SAE '{label}' (seed {seed}) became NaN/inf after {samples:,} samples; "
            f"lower train.lr (now {lr:g}) or the l1/aux coefficients"
        )


class TrainThroughput:
    """samples_per_second of a training result (a world's or stored activations'): samples per SAE x
    SAEs trained (variants x seeds) / training time, as metrics.json reports it."""

    @property
    def samples_per_second(self) -> float:
        n_saes = sum(stack.sae.n_saes for stack in self.stacks)
        return self.samples * n_saes / max(self.train_seconds, 1e-9)


@dataclass
class TrainResult(TrainThroughput):
    config: ExperimentConfig
    world: World
    """The world trained on: a sampled `World`, or `world.activations.StoredActivations` (stored rows)."""
    seeds: list[int]
    stacks: list[TrainedStack]
    samples: int
    train_seconds: float
    history: TrainingHistory = field(default_factory=TrainingHistory)
    """Every loss term per logged step, per SAE and seed: history.json."""


def lr_factor(config: ExperimentConfig, step: int, steps: int) -> float:
    train = config.train
    start = steps * (1 - train.lr_decay_fraction)
    if train.lr_decay == "none" or step < start:
        return 1.0
    progress = (step - start) / max(steps - start, 1)
    return 1 - progress if train.lr_decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))


def train(config: ExperimentConfig, device: str = "cpu", progress: bool = True) -> TrainResult:
    """Train every [[sae]] of `config` for every seed; the SAEs of one seed share its data.
    `train.engine` says how gradients are computed (see `choose_engine`)."""
    engine = choose_engine(config, device)
    with single_torch_thread(device):
        world = World.build(config.world).to(device)
        return run_training(
            config, world, new_stacks(config, config.world.dim, device), engine, device, progress
        )


def new_stacks(config: ExperimentConfig, dim: int, device: str) -> list[TrainedStack]:
    """Every [[sae]] of `config`, freshly initialised for every seed, on inputs of `dim` dimensions."""
    seeds = list(range(config.train.first_seed, config.train.first_seed + config.train.seeds))
    return [
        TrainedStack(sc, build_sae(sc, len(seeds), dim, seeds, config.train.init).to(device))
        for sc in config.sae
    ]


@contextlib.contextmanager
def single_torch_thread(device: str):
    """One math thread (torch's and numpy's BLAS) for the toy-sized products: a second thread costs
    more in hand-offs than it brings, and collapses when the other core is busy; the sampling
    thread takes that core."""
    before = torch.get_num_threads()
    if device != "cpu":
        yield
        return
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def run_training(
    config: ExperimentConfig,
    world,
    stacks: list[TrainedStack],
    engine_class: type[Engine],
    device: str,
    progress: bool,
) -> TrainResult:
    """The one training loop: `stacks` (see `new_stacks`) trained by `engine_class` on the batches
    `DataStream` opens for `world`: a sampled `World`, or stored activations
    (world/activations.py `StoredActivations`, by training/on_activations.py)."""
    seeds = list(range(config.train.first_seed, config.train.first_seed + config.train.seeds))
    engine = engine_class(config, world, seeds, stacks, device)
    batch = config.train.batch_size
    steps = math.ceil(config.train.samples / batch)
    history = TrainingHistory.empty([stack.config.label for stack in stacks], seeds)

    # Signals wait for the end of a step (see termination.py): loading or compiling the kernels,
    # here and when the stream starts, must not be cut short. Overflow is not a numpy warning
    # here: the NaN/inf check below stops training with a clear message.
    with (
        termination.deferred(),
        DataStream(world, seeds, batch, engine.stream_device, prefetch=True) as stream,
        _progress_bar(progress, steps * batch) as bar,
        np.errstate(all="ignore"),
    ):
        engine.pace(stream.prefetcher)
        engine.warm_up()  # start-up, not training time
        start = time.perf_counter()
        try:
            for step in range(steps):
                termination.check()
                want_loss = step % LOG_EVERY == 0 or step == steps - 1
                lr = config.train.lr * lr_factor(config, step, steps)
                logged = engine.step(stream.next(), step * batch, lr, want_loss)
                if want_loss:
                    samples = (step + 1) * batch
                    _check_finite(stacks, logged, seeds, samples, config.train.lr)
                    history.record(samples, logged)
                    bar.update(samples, time.perf_counter() - start, history.means())
            train_seconds = time.perf_counter() - start
        finally:
            engine.close()

    for stack, aux in zip(stacks, engine.auxes):
        if aux is not None:
            stack.tau_SK = as_torch(aux.schedule(steps * batch)[1]).to(device)
    return TrainResult(config, world, seeds, stacks, steps * batch, train_seconds, history)


def _check_finite(stacks, logged, seeds, samples, lr) -> None:
    for stack in stacks:
        parts = logged[stack.config.label]
        bad = ~torch.isfinite(parts["mse"]) | ~torch.isfinite(stack.sae.W_dec_SKD).flatten(1).all(1)
        if bad.any():
            raise TrainingDiverged(stack.config.label, seeds[int(bad.nonzero()[0])], samples, lr)


class _progress_bar:
    """rich progress with samples/s and the current losses; silent when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("training"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[speed]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"),
                transient=True,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.total, speed="", losses="")
        return self

    def update(self, done: int, seconds: float, means: dict) -> None:
        """`means`: {label: {term: mean over seeds}} of the latest logged step."""
        if not self.enabled:
            return
        losses = "  ".join(
            f"{label}: mse {parts['mse']:.3g}"
            + (f" aux {parts['aux']:.2g}" if "aux" in parts else "")
            for label, parts in means.items()
        )
        self.progress.update(
            self.task,
            completed=done,
            speed=f"{done / max(seconds, 1e-9) / 1e6:.2f}M samples/s",
            losses=losses,
        )

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)
        return False
