"""One `train(...)`: every SAE of an experiment (variants x seeds) in lockstep on one data stream per seed."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .aux import AuxState
from .inverse import InverseState
from .refit import Probe
from ..config.schema import ConfigError, ExperimentConfig, SAEConfig
from ..engine.backend import amax, as_torch, clamp_min, concat_flat, is_numpy, norm_last
from ..engine import fastpath, kernel
from ..engine.fastpath import Architecture, WorldGeometry, params_of
from ..engine.optim import FlatAdam, flatten_parameters, split_like
from ..saes import StackedSAE, build_sae, weighted_sum
from ..world.stream import DataStream
from .termination import termination
from ..world.model import World

LOG_EVERY = 200  # steps between loss logs, NaN checks and progress updates


class TrainingDiverged(RuntimeError):
    def __init__(self, label: str, seed: int, samples: int, lr: float):
        super().__init__(
            f"train.lr: loss of SAE '{label}' (seed {seed}) became NaN/inf after {samples:,} samples; "
            f"lower train.lr (now {lr:g}) or the l1/aux coefficients"
        )


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
    """Every logged step: {"samples", LABEL: {term: mean over seeds}} (the progress bar's view)."""
    seed_history: list[dict] = field(default_factory=list)
    """Every logged step: {"samples", LABEL: {term: [value per seed, in `seeds` order]}}; a term an
    SAE did not compute at that step (the aux loss before its delay) is absent. history.json's source."""

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
    """Train every [[sae]] of `config` for every seed; the SAEs of one seed share its data.
    `train.engine` says how gradients are computed (see `choose_engine`)."""
    engine = choose_engine(config, device)
    with single_torch_thread(device):
        return _train(config, device, progress, engine)


def choose_engine(config: ExperimentConfig, device: str) -> str:
    """`train.engine` made concrete: "autograd", "arrays" (fastpath.py on torch tensors: the GPU's
    engine, and on the CPU a check of it) or "compiled" (kernel.py, CPU only). "auto" takes the
    hand-derived gradients where every SAE declares them, else autograd for all."""
    engine = config.train.engine
    without = [sae.label for sae in config.sae if fastpath.hand_gradients(sae) is None]
    if World.is_sparse(config.world):
        # Sparse worlds train on inputs x (the engines' feature space would be the world's thousands of
        # features): autograd by default; 'arrays' runs its formulas with x as the magnitudes of D unit axes.
        if engine == "compiled":
            raise ConfigError("train.engine", "'compiled' works in feature space, and this world samples sparsely "
                                              f"({config.world.features} features, or a tree, correlation, bias or "
                                              "load); use 'auto', 'autograd' or 'arrays'")
        if engine == "arrays" and without:
            raise ConfigError("train.engine", f"'arrays' needs hand-derived gradients, and SAE(s) {without} declare none; "
                                              "use 'auto' or 'autograd'")
        return "autograd" if engine == "auto" else engine
    if engine == "auto":
        return "autograd" if without else "compiled" if device == "cpu" else "arrays"
    if engine in ("arrays", "compiled") and without:
        raise ConfigError("train.engine", f"{engine!r} needs hand-derived gradients, and SAE(s) {without} declare "
                                          "none (architecture, activation or loss terms); use 'auto' or 'autograd'")
    if engine == "compiled" and device != "cpu":
        raise ConfigError("train.engine", f"'compiled' runs on the CPU only; on {device} use 'auto', 'arrays' or 'autograd'")
    return engine


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


def _train(config: ExperimentConfig, device: str, progress: bool, engine: str) -> TrainResult:
    world = World.build(config.world).to(device)
    seeds = list(range(config.train.first_seed, config.train.first_seed + config.train.seeds))
    batch = config.train.batch_size
    stacks = [
        TrainedStack(sc, build_sae(sc, len(seeds), config.world.dim, seeds, config.train.init).to(device))
        for sc in config.sae
    ]
    # The compiled kernel works on numpy views of the parameters; the other engines on torch tensors.
    on_numpy = engine == "compiled"
    zeros = partial(np.zeros, dtype=np.float32) if on_numpy else partial(torch.zeros, device=device)
    # Peak refits (mixture thresholds, inverse technique) run the SAE's torch forward on held-out probe inputs.
    probe = lambda stack, inputs: partial(Probe(world, seeds, inputs, device), stack.sae)  # noqa: E731
    auxes = [AuxState(s.config.aux, len(seeds), s.config.latents, zeros, probe(s, s.config.aux.refit_inputs))
             if s.config.aux else None for s in stacks]
    inverses = [InverseState(s.config.inverse, len(seeds), s.config.latents, config.world.dim,
                             probe(s, s.config.inverse.refit_inputs), device)
                if s.config.inverse else None for s in stacks]
    parameters = [p for stack in stacks for p in stack.sae.parameters()]
    flat = flatten_parameters(parameters)
    optimiser = FlatAdam(flat.numpy() if on_numpy else flat, lr=config.train.lr)
    arrays = [params_of(stack.sae, "numpy" if on_numpy else "torch") for stack in stacks]
    archs = [Architecture.of(stack.sae) for stack in stacks] if engine != "autograd" else None
    # A sparse world's batches are inputs x: to the engines, magnitudes of the D unit axes.
    axes = torch.eye(config.world.dim, device=device) if world.sparse else world.directions_ND
    geometry = WorldGeometry.of(axes, "numpy" if on_numpy else "torch")
    # The compiled kernel writes each gradient straight into its place in one flat buffer.
    grad_flat = grad_outs = None
    if engine == "compiled":
        grad_flat = np.zeros_like(optimiser.flat)
        views = iter(split_like(grad_flat, [p.shape for p in parameters]))  # in the parameters' order
        grad_outs = [{name: next(views) for name in params} for params in arrays]
    steps = math.ceil(config.train.samples / batch)
    history: list[dict] = []
    seed_history: list[dict] = []

    stream_device = None if on_numpy else device
    # Signals wait for the end of a step (see termination.py): loading or compiling the kernels,
    # here and when the stream starts, must not be cut short. Overflow is not a numpy warning
    # here: the NaN/inf check below stops training with a clear message.
    with termination.deferred(), DataStream(world, seeds, batch, stream_device, prefetch=True) as stream, \
            _progress_bar(progress, steps * batch) as bar, np.errstate(all="ignore"):
        if engine == "compiled":  # start-up, not training time
            for arch, params in zip(archs, arrays):
                kernel.warm_up(arch, params, geometry)
        optimiser.warm_up()
        start = time.perf_counter()
        for step in range(steps):
            termination.check()
            f_RNB = stream.next()
            if world.sparse:
                f_RNB = world.inputs(f_RNB).transpose(-1, -2)  # x_RDB: see `axes`
            want_loss = step % LOG_EVERY == 0 or step == steps - 1
            if engine != "autograd":
                logged, grads = _fast_step(stacks, archs, arrays, auxes, inverses, geometry, f_RNB, step * batch,
                                           want_loss, grad_outs)
                grad = grad_flat if grad_outs is not None else concat_flat(grads)
            else:
                x_RBD = f_RNB.transpose(-1, -2) if world.sparse else world.inputs(f_RNB)
                logged, grads = _autograd_step(stacks, auxes, inverses, x_RBD, step * batch)
                grad = concat_flat(grads)
            optimiser.step(grad, config.train.lr * lr_factor(config, step, steps))
            if config.train.unit_norm_decoder:
                for params in arrays:
                    W = params["W_dec_SKD"]
                    W /= clamp_min(norm_last(W), 1e-12)[..., None]
            if want_loss:
                logged = {label: {k: as_torch(v) for k, v in parts.items()} for label, parts in logged.items()}
                _check_finite(stacks, logged, seeds, (step + 1) * batch, config.train.lr)
                seed_history.append({"samples": (step + 1) * batch, **_per_seed(logged)})
                history.append({"samples": (step + 1) * batch, **_summarise(logged)})
                bar.update((step + 1) * batch, time.perf_counter() - start, history[-1])
        train_seconds = time.perf_counter() - start

    for stack, aux in zip(stacks, auxes):
        if aux is not None:
            stack.tau_SK = as_torch(aux.schedule(steps * batch)[1]).to(device)
    return TrainResult(config, world, seeds, stacks, steps * batch, train_seconds, history, seed_history)


def _autograd_step(stacks, auxes, inverses, x_RBD, samples_seen) -> tuple[dict, list[torch.Tensor]]:
    """The reference: losses through autograd; gradients in parameter order."""
    total, logged = 0.0, {}
    for stack, aux, inverse in zip(stacks, auxes, inverses):
        loss_S, parts = _stack_loss(stack, aux, inverse, x_RBD, samples_seen)
        total = total + loss_S.sum()
        logged[stack.config.label] = parts
    for stack in stacks:
        stack.sae.zero_grad(set_to_none=True)
    total.backward()
    return logged, [p.grad for stack in stacks for p in stack.sae.parameters()]


def _fast_step(stacks, archs, arrays, auxes, inverses, geometry, f_RNB, samples_seen, want_loss, grad_outs=None):
    """Hand-derived gradients of the loss terms each SAE declares, same values as `_autograd_step`:
    by the compiled kernel (kernel.py), which writes them into `grad_outs`, or, without `grad_outs`,
    by fastpath.py; the parameter terms' gradients (no batch) by autograd on top. Returns the losses if
    asked, and the gradients in parameter order."""
    logged, all_grads = {}, []
    for i, (stack, arch, params, aux, inverse) in enumerate(zip(stacks, archs, arrays, auxes, inverses)):
        lam, tau_SK = aux.schedule(samples_seen) if aux else (0.0, None)
        weights = stack.sae.loss_weights(stack.config, lam)
        arguments = (arch, params, geometry, f_RNB, weights, tau_SK, want_loss)
        if grad_outs is not None:
            losses, h_max, grads = kernel.loss_and_grads(*arguments, out=grad_outs[i])
        else:
            losses, h, grads = fastpath.loss_and_grads(*arguments)
            h_max = amax(h, -1)
        extra = _add_parameter_term_grads(stack, inverse, samples_seen, grads)
        all_grads += [grads[name] for name in params]
        if aux is not None:
            aux.running_max.update(h_max)
        if want_loss:
            losses = {**(losses or {}), **_declared_terms(stack, f_RNB, geometry, tau_SK, lam, skip=losses or {}),
                      **extra}
        logged[stack.config.label] = losses or {}
    return logged, all_grads


@torch.no_grad()
def _declared_terms(stack: TrainedStack, f_RNB, geometry, tau_SK, lam: float, skip) -> dict:
    """The batch means of the loss terms the SAE declares that a hand-gradient engine does not report
    (the aux loss): one forward pass on a logged step, so every engine logs the same terms."""
    declared = {name for name, weight in stack.sae.loss_weights(stack.config, lam).items() if weight != 0}
    if not declared - set(skip):
        return {}
    x_RBD = as_torch(f_RNB).transpose(-1, -2) @ as_torch(geometry.F_ND)
    tau = as_torch(tau_SK) if tau_SK is not None else None
    terms, _ = stack.sae.loss_terms(x_RBD, tau, lam)
    return {name: value.mean(-1) for name, (_, value) in terms.items() if name not in skip}


def _parameter_terms(stack: TrainedStack, inverse: InverseState | None, samples_seen: int) -> dict:
    return stack.sae.parameter_terms(inverse.schedule(samples_seen) if inverse else None)


def _add_parameter_term_grads(stack, inverse, samples_seen, grads) -> dict:
    """Add the gradients of the terms the SAE declares on its parameters alone (autograd: they need no
    batch) to the hand-derived `grads`, in place; returns the terms' values."""
    terms = _parameter_terms(stack, inverse, samples_seen)
    if not terms:
        return {}
    named = dict(stack.sae.named_parameters())
    with torch.enable_grad():
        found = torch.autograd.grad(weighted_sum(terms).sum(), list(named.values()), allow_unused=True)
    for name, g in zip(named, found):
        if g is not None:
            grads[name] += g.numpy() if is_numpy(grads[name]) else g
    return {name: value.detach() for name, (_, value) in terms.items()}


def _stack_loss(stack: TrainedStack, aux: AuxState | None, inverse: InverseState | None, x_RBD: torch.Tensor,
                samples_seen: int):
    """The weighted sum of the terms the SAE declares, per SAE and averaged over the batch (plus its
    parameter terms); and each term's batch mean, to log."""
    lam, tau_SK = aux.schedule(samples_seen) if aux else (0.0, None)
    terms, h = stack.sae.loss_terms(x_RBD, tau_SK, lam)
    if aux is not None:
        aux.running_max.update(h.detach().amax(dim=1))
    parameter_terms = _parameter_terms(stack, inverse, samples_seen)
    loss_S = weighted_sum(terms).mean(-1) + (weighted_sum(parameter_terms) if parameter_terms else 0.0)
    logged = {name: value.detach().mean(-1) for name, (_, value) in terms.items()}
    return loss_S, {**logged, **{name: value.detach() for name, (_, value) in parameter_terms.items()}}


def _per_seed(logged: dict) -> dict:
    return {label: {k: values.reshape(-1).tolist() for k, values in parts.items()}
            for label, parts in logged.items() if parts}


def _summarise(logged: dict) -> dict:
    return {label: {k: float(v.mean()) for k, v in parts.items()} for label, parts in logged.items() if parts}


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
