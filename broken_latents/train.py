"""One `train(...)`: every SAE of an experiment (variants x seeds) in lockstep on one data stream per seed."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .aux import AuxState, aux_loss
from .config import ExperimentConfig, SAEConfig
from .saes import StackedSAE, build_sae
from .world import World

# Draw this many batches per seed at once: fewer generator calls, same stream for any run length.
STREAM_CHUNK_BATCHES = 16


class TrainingDiverged(RuntimeError):
    def __init__(self, label: str, seed: int, samples: int, lr: float):
        super().__init__(
            f"train.lr: loss of SAE '{label}' (seed {seed}) became NaN/inf after {samples:,} samples; "
            f"lower train.lr (now {lr:g}) or the l1/aux coefficients"
        )


class DataStream:
    """Seed r's samples come from its own generator, so seed r gives the same SAEs in any run."""

    def __init__(self, world: World, seeds: list[int], batch: int, device: str | torch.device, offset: int = 0,
                 chunk: int = STREAM_CHUNK_BATCHES):
        self.world, self.batch, self.chunk = world, batch, chunk
        self.generators = [torch.Generator(device=device).manual_seed(1_000_000 * offset + s) for s in seeds]
        self.buffer_RCBN: torch.Tensor | None = None
        self.position = chunk

    def next(self) -> torch.Tensor:
        """Feature magnitudes f_RBN of the next batch of every seed."""
        if self.position == self.chunk:
            chunks = [self.world.sample(g, self.chunk * self.batch, 1)[0] for g in self.generators]
            self.buffer_RCBN = torch.stack(chunks).view(len(chunks), self.chunk, self.batch, -1)
            self.position = 0
        self.position += 1
        return self.buffer_RCBN[:, self.position - 1]


@dataclass
class TrainedStack:
    config: SAEConfig
    sae: StackedSAE
    tau_SK: torch.Tensor | None = None
    """The aux loss's final thresholds (the JumpReLU threshold when it uses them)."""


@dataclass
class TrainResult:
    config: ExperimentConfig
    world: World
    seeds: list[int]
    stacks: list[TrainedStack]
    samples: int
    train_seconds: float
    history: list[dict] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        n_saes = sum(stack.sae.n_saes for stack in self.stacks)
        return self.samples * n_saes / max(self.train_seconds, 1e-9)


def lr_factor(config: ExperimentConfig, step: int, steps: int) -> float:
    train = config.train
    start = steps * (1 - train.lr_decay_fraction)
    if train.lr_decay == "none" or step < start:
        return 1.0
    progress = (step - start) / max(steps - start, 1)
    return 1 - progress if train.lr_decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))


def train(config: ExperimentConfig, device: str = "cpu", progress: bool = True) -> TrainResult:
    world = World.build(config.world).to(device)
    seeds = list(range(config.train.seeds))
    batch = config.train.batch_size
    stacks = [
        TrainedStack(sc, build_sae(sc, len(seeds), config.world.dim, seeds, config.train.init).to(device))
        for sc in config.sae
    ]
    auxes = [AuxState(s.config.aux, len(seeds), s.config.latents, device) if s.config.aux else None for s in stacks]
    optimiser = torch.optim.Adam([p for s in stacks for p in s.sae.parameters()], lr=config.train.lr)
    stream = DataStream(world, seeds, batch, device)
    steps = math.ceil(config.train.samples / batch)
    history: list[dict] = []

    with _progress_bar(progress, steps * batch) as bar:
        start = time.perf_counter()
        for step in range(steps):
            x_RBD = stream.next() @ world.directions_ND
            total = torch.zeros((), device=device)
            logged = {}
            for stack, aux in zip(stacks, auxes):
                loss_S, parts = _stack_loss(stack, aux, x_RBD, step * batch)
                total = total + loss_S.sum()
                logged[stack.config.label] = parts
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            for group in optimiser.param_groups:
                group["lr"] = config.train.lr * lr_factor(config, step, steps)
            optimiser.step()
            if config.train.unit_norm_decoder:
                with torch.no_grad():
                    for stack in stacks:
                        stack.sae.W_dec_SKD.data = torch.nn.functional.normalize(stack.sae.W_dec_SKD.data, dim=-1)
            if step % 200 == 0 or step == steps - 1:
                _check_finite(stacks, logged, seeds, (step + 1) * batch, config.train.lr)
                history.append({"samples": (step + 1) * batch, **_summarise(logged)})
                bar.update((step + 1) * batch, time.perf_counter() - start, history[-1])
        train_seconds = time.perf_counter() - start

    for stack, aux in zip(stacks, auxes):
        if aux is not None:
            stack.tau_SK = aux.schedule(steps * batch)[1]
    return TrainResult(config, world, seeds, stacks, steps * batch, train_seconds, history)


def _stack_loss(stack: TrainedStack, aux: AuxState | None, x_RBD: torch.Tensor, samples_seen: int):
    lam, tau_SK = aux.schedule(samples_seen) if aux else (0.0, None)
    out = stack.sae.losses(x_RBD, tau_SK)
    loss_S = out["mse"] + stack.config.l1 * out["l1"]
    parts = {"mse": out["mse"].detach(), "l1": out["l1"].detach()}
    if aux is not None:
        h = out["h"].detach()
        if lam > 0:
            aux_S = aux_loss(x_RBD, stack.sae.b_dec_SD, stack.sae.W_dec_SKD, h, tau_SK)
            loss_S = loss_S + lam * aux_S
            parts["aux"] = aux_S.detach()
        aux.running_max.update(h.amax(dim=1))
    return loss_S, parts


def _summarise(logged: dict) -> dict:
    return {label: {k: float(v.mean()) for k, v in parts.items()} for label, parts in logged.items()}


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
                TextColumn("training"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                transient=True,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.total, speed="", losses="")
        return self

    def update(self, done: int, seconds: float, record: dict) -> None:
        if not self.enabled:
            return
        losses = "  ".join(
            f"{label}: mse {parts['mse']:.3g}" + (f" aux {parts['aux']:.2g}" if "aux" in parts else "")
            for label, parts in record.items() if label != "samples"
        )
        self.progress.update(self.task, completed=done, speed=f"{done / max(seconds, 1e-9) / 1e6:.2f}M samples/s", losses=losses)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)
        return False
