"""How a training step computes its gradients: an `Engine`, chosen once per run by `choose_engine`.

- "autograd": the losses the SAEs declare, through torch autograd (the reference; any SAE).
- "arrays": the hand-derived gradients of engine/fastpath.py on torch tensors (the GPU's engine;
  on the CPU a second implementation the tests compare against).
- "compiled": the same gradients in one numba call per SAE stack (engine/kernel.py; the CPU's).
- "auto" on a sparse world: `SparseLatentsEngine`, gradients on the inputs x that use the few active
  latents (engine/sparse_latents.py; numba on the CPU, torch index ops on a GPU).

Every engine keeps the parameters of all the SAEs in one flat buffer with Adam over it (optim.py),
and has one `step` method: gradients of one batch, then the optimiser's step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np
import torch

from .aux import AuxState
from .inverse import InverseState
from .refit import Probe
from ..config.schema import ConfigError, ExperimentConfig, SAEConfig
from ..engine import fastpath, kernel, sparse_latents
from ..engine.chunks import ChunkPool, HelperProbe
from ..engine.backend import amax, as_torch, clamp_min, concat_flat, is_numpy, norm_last
from ..engine.fastpath import Architecture, WorldGeometry, params_of
from ..engine.optim import FlatAdam, flatten_parameters, split_like
from ..saes import StackedSAE, weighted_sum
from ..world.model import World


@dataclass
class TrainedStack:
    config: SAEConfig
    sae: StackedSAE
    tau_SK: torch.Tensor | None = None
    """The aux loss's final thresholds (the JumpReLU threshold when it uses them)."""


class Engine:
    """Every SAE stack of a run, trained one batch at a time: the parameters as one flat buffer
    with Adam over it, each stack's aux and inverse schedules, and `step`. Subclasses say how the
    gradients are computed (`gradients`)."""

    name: ClassVar[str]
    backend: ClassVar[str] = "torch"
    """The arrays the engine reads the parameters, batches and aux state as: "torch", or "numpy"
    (views of the same memory)."""

    def __init__(
        self,
        config: ExperimentConfig,
        world: World,
        seeds: list[int],
        stacks: list[TrainedStack],
        device: str,
    ):
        self.stacks, self.world, self.device = stacks, world, device
        self.unit_norm_decoder = config.train.unit_norm_decoder
        on_numpy = self.backend == "numpy"
        zeros = (
            partial(np.zeros, dtype=np.float32) if on_numpy else partial(torch.zeros, device=device)
        )
        # Peak refits (mixture thresholds, inverse technique) run the SAE's torch forward on held-out probe inputs.
        probe = lambda stack, inputs: partial(Probe(world, seeds, inputs, device), stack.sae)  # noqa: E731
        self.auxes = [
            AuxState(
                s.config.aux,
                len(seeds),
                s.config.latents,
                zeros,
                probe(s, s.config.aux.refit_inputs),
            )
            if s.config.aux
            else None
            for s in stacks
        ]
        self.inverses = [
            InverseState(
                s.config.inverse,
                len(seeds),
                s.config.latents,
                config.world.dim,
                probe(s, s.config.inverse.refit_inputs),
                device,
            )
            if s.config.inverse
            else None
            for s in stacks
        ]
        self.parameters = [p for stack in stacks for p in stack.sae.parameters()]
        flat = flatten_parameters(self.parameters)
        self.optimiser = FlatAdam(flat.numpy() if on_numpy else flat, lr=config.train.lr)
        self.arrays = [params_of(stack.sae, self.backend) for stack in stacks]
        """Each stack's parameters by name, as `backend` arrays sharing the flat buffer's memory."""

    @property
    def stream_device(self) -> str | None:
        """Where the data stream puts its batches: None for numpy arrays."""
        return None if self.backend == "numpy" else self.device

    def warm_up(self) -> None:
        """Load (or compile) what the first step would otherwise pay for: start-up, not training time."""
        self.optimiser.warm_up()

    def pace(self, prefetcher) -> None:
        """Told the sampling thread of the training stream (`world.prefetch.Prefetcher`, or None
        without one), an engine may pace its draws (`Prefetcher.pace`); most leave it free."""

    def close(self) -> None:
        """Stop what the engine started (helper threads); called once training ends."""

    def step(self, f_RNB, samples_seen: int, lr: float, want_loss: bool) -> dict:
        """One Adam step of every SAE on the batch f_RNB (feature magnitudes, batch last). Returns,
        if `want_loss`, each SAE's loss terms {label: {term: tensor [seeds]}}, else {}."""
        logged, grad = self.gradients(self.as_features(f_RNB), samples_seen, want_loss)
        self.optimiser.step(grad, lr)
        if self.unit_norm_decoder:
            for params in self.arrays:
                W = params["W_dec_SKD"]
                W /= clamp_min(norm_last(W), 1e-12)[..., None]
        if not want_loss:
            return {}
        return {
            label: {k: as_torch(v) for k, v in parts.items()} for label, parts in logged.items()
        }

    def as_features(self, batch):
        """A sparse world's batches are firing lists: the engines train on its inputs x, read as the
        magnitudes of the D unit axes (x_RDB; the world's thousands of features would not fit)."""
        return self.world.inputs(batch).transpose(-1, -2) if self.world.sparse else batch

    def inputs(self, f_RNB):
        """x_RBD of a batch as `as_features` gave it."""
        return f_RNB.transpose(-1, -2) if self.world.sparse else self.world.inputs(f_RNB)

    def gradients(self, f_RNB, samples_seen: int, want_loss: bool) -> tuple[dict, object]:
        """(each SAE's loss terms by label (all of them when `want_loss`), the gradient of the total
        loss as one flat array in the optimiser buffer's layout)."""
        raise NotImplementedError


class AutogradEngine(Engine):
    """The reference: the weighted loss terms each SAE declares, through autograd."""

    name = "autograd"

    def gradients(self, f_RNB, samples_seen, want_loss):
        x_RBD = self.inputs(f_RNB)
        total, logged = 0.0, {}
        for stack, aux, inverse in zip(self.stacks, self.auxes, self.inverses):
            loss_S, parts = _stack_loss(stack, aux, inverse, x_RBD, samples_seen)
            total = total + loss_S.sum()
            logged[stack.config.label] = parts
        for stack in self.stacks:
            stack.sae.zero_grad(set_to_none=True)
        total.backward()
        return logged, concat_flat([p.grad for p in self.parameters])


class ArraysEngine(Engine):
    """Hand-derived gradients of the batch terms (fastpath.py: array code, numpy or torch), the
    same values as autograd's; the parameter terms' gradients (no batch) by autograd on top."""

    name = "arrays"

    def __init__(self, config, world, seeds, stacks, device):
        super().__init__(config, world, seeds, stacks, device)
        self.archs = [Architecture.of(stack.sae) for stack in stacks]
        axes = (
            torch.eye(world.directions_ND.shape[1], device=device)
            if world.sparse
            else world.directions_ND
        )  # see `as_features`
        self.geometry = WorldGeometry.of(axes, self.backend)

    def gradients(self, f_RNB, samples_seen, want_loss):
        logged, grads = self.hand_gradients(f_RNB, samples_seen, want_loss)
        return logged, concat_flat(grads)

    def stack_loss_and_grads(self, i: int, *arguments) -> tuple[dict | None, object, dict]:
        """Stack i's (losses if asked, batch max of h [S, K], gradients by parameter name)."""
        losses, h, grads = fastpath.loss_and_grads(*arguments)
        return losses, amax(h, -1), grads

    def hand_gradients(self, f_RNB, samples_seen, want_loss) -> tuple[dict, list]:
        """Each SAE's logged terms (when asked) and the gradients, in parameter order."""
        logged, all_grads = {}, []
        for i, (stack, params, aux, inverse) in enumerate(
            zip(self.stacks, self.arrays, self.auxes, self.inverses)
        ):
            lam, tau_SK = aux.schedule(samples_seen) if aux else (0.0, None)
            weights = stack.sae.loss_weights(stack.config, lam)
            losses, h_max, grads = self.stack_loss_and_grads(
                i, self.archs[i], params, self.geometry, f_RNB, weights, tau_SK, want_loss
            )
            extra = _add_parameter_term_grads(stack, inverse, samples_seen, grads)
            all_grads += [grads[name] for name in params]
            if aux is not None:
                aux.running_max.update(h_max)
            if want_loss:
                losses = {
                    **(losses or {}),
                    **_declared_terms(stack, f_RNB, self.geometry, tau_SK, lam, skip=losses or {}),
                    **extra,
                }
            logged[stack.config.label] = losses or {}
        return logged, all_grads


class CompiledEngine(ArraysEngine):
    """The hand-derived gradients in one compiled call per stack (kernel.py; CPU only), written
    straight into their places in one flat gradient buffer."""

    name = "compiled"
    backend = "numpy"

    def __init__(self, config, world, seeds, stacks, device):
        super().__init__(config, world, seeds, stacks, device)
        self.grad_flat = np.zeros_like(self.optimiser.flat)
        views = iter(
            split_like(self.grad_flat, [p.shape for p in self.parameters])
        )  # in the parameters' order
        self.grad_outs = [{name: next(views) for name in params} for params in self.arrays]

    def warm_up(self) -> None:
        for arch, params in zip(self.archs, self.arrays):
            kernel.warm_up(arch, params, self.geometry)
        super().warm_up()

    def gradients(self, f_RNB, samples_seen, want_loss):
        logged, _ = self.hand_gradients(f_RNB, samples_seen, want_loss)
        return logged, self.grad_flat

    def stack_loss_and_grads(self, i, *arguments):
        return kernel.loss_and_grads(*arguments, out=self.grad_outs[i])


class SparseLatentsEngine(Engine):
    """Sparse worlds: hand-derived gradients on the inputs x that use the few active latents of
    TopK, BatchTopK and ReLU SAEs (engine/sparse_latents.py); only the encoder's product is dense.
    On a GPU, torch index ops; the CPU subclass runs numba kernels and Adam on numpy views. A stack
    those gradients do not cover (JumpReLU, an architecture or term without hand gradients) trains
    by autograd in the same step (`sparse_latents.covers`)."""

    name = "sparse-latents"
    compiled: ClassVar[bool] = False
    """The numba kernels (CPU) rather than torch index ops."""

    def __init__(self, config, world, seeds, stacks, device):
        super().__init__(config, world, seeds, stacks, device)
        self.archs = [
            sparse_latents.SparseArchitecture.of(s.sae)
            if sparse_latents.covers(s.sae.config)
            else None
            for s in stacks
        ]
        self.grad_flat = torch.zeros_like(as_torch(self.optimiser.flat))
        views = iter(split_like(self.grad_flat, [p.shape for p in self.parameters]))
        self.pool: ChunkPool | None = None
        """Splits the dense parts of a step over two threads (the CPU subclass)."""
        self.kept_min: list[torch.Tensor | None] = [None] * len(stacks)
        """BatchTopK stacks: each SAE's smallest kept activation of the last batch."""
        self.grad_outs = [
            {name: next(views) for name, _ in s.sae.named_parameters()} for s in stacks
        ]
        self.prefetcher = None
        """The paced sampling thread (`pace`): one turn a step (`give_turn`)."""
        self._turn_given = False

    def warm_up(self) -> None:
        if self.compiled:
            sparse_latents.warm_up()
        super().warm_up()

    def gradients(self, batch, samples_seen, want_loss):
        x_RBD = self.inputs(batch)
        logged = {}
        for i, (stack, arch, aux, inverse, out) in enumerate(
            zip(self.stacks, self.archs, self.auxes, self.inverses, self.grad_outs)
        ):
            if arch is None:
                logged[stack.config.label] = self._autograd(
                    stack, aux, inverse, x_RBD, samples_seen, out
                )
                continue
            lam, tau_SK = aux.schedule(samples_seen) if aux else (0.0, None)
            params = {name: p.detach() for name, p in stack.sae.named_parameters()}
            losses, h_max_SK, entries = sparse_latents.loss_and_grads(
                arch,
                params,
                x_RBD,
                stack.sae.loss_weights(stack.config, lam),
                None if tau_SK is None else as_torch(tau_SK),
                want_loss,
                out,
                self.compiled,
                self.kept_min[i],
                self.pool,
                self.give_turn,
            )
            if entries.kept_min_S is not None:
                stack.sae.record_batchtopk_threshold(entries.kept_min_S)
                self.kept_min[i] = entries.kept_min_S  # the next batch's threshold is near it
            if aux is not None:
                aux.running_max.update(h_max_SK.numpy() if self.backend == "numpy" else h_max_SK)
            extra = _add_parameter_term_grads(stack, inverse, samples_seen, out)
            logged[stack.config.label] = {**(losses or {}), **extra}
        return logged, self.grad_flat.numpy() if self.backend == "numpy" else self.grad_flat

    def give_turn(self) -> None:
        """Let the paced sampling thread draw the next batch, once a step."""
        if self.prefetcher is not None and not self._turn_given:
            self.prefetcher.give_turn()
            self._turn_given = True

    @staticmethod
    def _autograd(stack, aux, inverse, x_RBD, samples_seen, out) -> dict:
        """One stack's gradients by autograd, written into `out`; its logged terms."""
        loss_S, parts = _stack_loss(stack, aux, inverse, x_RBD, samples_seen)
        named = dict(stack.sae.named_parameters())
        found = torch.autograd.grad(loss_S.sum(), list(named.values()), allow_unused=True)
        for name, g in zip(named, found):
            out[name].copy_(g) if g is not None else out[name].zero_()
        return parts


class CompiledSparseLatentsEngine(SparseLatentsEngine):
    """`SparseLatentsEngine` on the CPU: the numba kernels, Adam compiled over numpy views; with two
    cores or more, the encoder's product and Adam's update in chunks on this thread and a helper
    (engine/chunks.py: the sampling thread leaves the second core idle part of each step)."""

    name = "sparse-latents-compiled"
    backend = "numpy"
    compiled = True

    def __init__(self, config, world, seeds, stacks, device):
        super().__init__(config, world, seeds, stacks, device)
        self.helper = ChunkPool() if (os.cpu_count() or 1) >= 2 else None
        self.probe = HelperProbe()
        self.transposed = [
            _store_transposed(stack.sae.W_enc_SDK, out)
            for stack, out in zip(stacks, self.grad_outs)
            if "W_enc_SDK" in out
        ]
        self.arrays = [params_of(stack.sae, self.backend) for stack in stacks]  # the new views

    def pace(self, prefetcher) -> None:
        """With a helper, the sampling thread draws each batch once the encoder's product is done
        (`Prefetcher.pace`). A width-1024 BatchTopK SAE at 2048 features: the helper took 1.6 of
        the encoder's 8 chunks, 4 paced; 115.5k samples/s before, 130-131k paced (same host)."""
        if self.helper is not None and prefetcher is not None:
            prefetcher.pace()
            self.prefetcher = prefetcher

    def step(self, f_RNB, samples_seen, lr, want_loss):
        use = self.helper is not None and self.probe.use_helper()
        self.pool = self.optimiser.pool = self.helper if use else None
        self._turn_given = False
        if not use:  # nothing to keep the second core free for: draw beside the whole step
            self.give_turn()
        logged = super().step(f_RNB, samples_seen, lr, want_loss)
        self.give_turn()  # a step without an encoder product (autograd stacks only) still gives one
        self.probe.step_done()
        return logged

    def close(self) -> None:
        if self.helper is not None:
            self.helper.close()
        # the trained SAE's parameters laid out as every other engine leaves them
        for W_enc in self.transposed:
            W_enc.data = W_enc.data.contiguous()


def _store_transposed(W_enc_SDK: torch.nn.Parameter, grad_out: dict) -> torch.nn.Parameter:
    """Lay W_enc out transposed in its place of the flat buffers ([S, K, D] in memory, the parameter
    and its gradient transposed views of it): the sparse-latent kernel sums the encoder's gradient
    by latent, row j of W_enc^T, and writes it in place (a transposed copy of 1024 x 256 cost
    0.29 ms a step). Adam is elementwise, so the layout is the buffers' own business."""
    S, D, K = W_enc_SDK.shape
    values = W_enc_SDK.detach().clone()
    storage = W_enc_SDK.data.view(S, K, D)  # its segment of the flat buffer, read as [S, K, D]
    storage.copy_(values.transpose(1, 2))
    W_enc_SDK.data = storage.transpose(1, 2)
    grad_out["W_enc_SDK"] = grad_out["W_enc_SDK"].view(S, K, D).transpose(1, 2)
    return W_enc_SDK


ENGINES: dict[str, type[Engine]] = {
    engine.name: engine for engine in (AutogradEngine, ArraysEngine, CompiledEngine)
}


def sparse_latents_engine(device: str) -> type[Engine]:
    """The engine for inputs x that are not a feature space (sparse worlds, stored activations)."""
    return CompiledSparseLatentsEngine if device == "cpu" else SparseLatentsEngine


def choose_engine(config: ExperimentConfig, device: str) -> type[Engine]:
    """`train.engine` made concrete: the class of "autograd", "arrays" or "compiled" (CPU only).
    "auto" takes the hand-derived gradients where every SAE declares them, else autograd for all."""
    name = config.train.engine
    without = [sae.label for sae in config.sae if fastpath.hand_gradients(sae) is None]
    if config.world.on_inputs and name == "compiled":
        raise ConfigError(
            "train.engine",
            "'compiled' works on a world's feature firings; on stored activations use one of "
            "'auto', 'autograd', 'arrays'"
            if config.world.activations is not None
            else "'compiled' works in feature space, and this world samples sparsely "
            f"({config.world.features} features, or a tree, correlation, bias or "
            "load); use 'auto', 'autograd' or 'arrays'",
        )
    if config.world.on_inputs and name == "auto":
        # Sparse worlds and stored activations train on x (the hand gradients' feature space would be
        # D unit axes): the sparse-latent gradients there, which fall back to autograd stack by stack.
        return sparse_latents_engine(device)
    if name == "auto":
        name = "autograd" if without else "compiled" if device == "cpu" else "arrays"
    elif name in ("arrays", "compiled") and without:
        raise ConfigError(
            "train.engine",
            f"{name!r} needs hand-derived gradients, and SAE(s) {without} declare "
            "none (architecture, activation or loss terms); use 'auto' or 'autograd'",
        )
    if name == "compiled" and device != "cpu":
        raise ConfigError(
            "train.engine",
            f"'compiled' runs on the CPU only; on {device} use 'auto', 'arrays' or 'autograd'",
        )
    return ENGINES[name]


# -- the loss terms, shared by the engines ------------------------------------------------------


def _stack_loss(
    stack: TrainedStack,
    aux: AuxState | None,
    inverse: InverseState | None,
    x_RBD: torch.Tensor,
    samples_seen: int,
):
    """The weighted sum of the terms the SAE declares, per SAE and averaged over the batch (plus its
    parameter terms); and each term's batch mean, to log."""
    lam, tau_SK = aux.schedule(samples_seen) if aux else (0.0, None)
    terms, h = stack.sae.loss_terms(x_RBD, tau_SK, lam)
    if aux is not None:
        aux.running_max.update(h.detach().amax(dim=1))
    parameter_terms = _parameter_terms(stack, inverse, samples_seen)
    loss_S = weighted_sum(terms).mean(-1) + (
        weighted_sum(parameter_terms) if parameter_terms else 0.0
    )
    logged = {name: value.detach().mean(-1) for name, (_, value) in terms.items()}
    return loss_S, {
        **logged,
        **{name: value.detach() for name, (_, value) in parameter_terms.items()},
    }


@torch.no_grad()
def _declared_terms(stack: TrainedStack, f_RNB, geometry, tau_SK, lam: float, skip) -> dict:
    """The batch means of the loss terms the SAE declares that a hand-gradient engine does not report
    (the aux loss): one forward pass on a logged step, so every engine logs the same terms."""
    declared = {
        name for name, weight in stack.sae.loss_weights(stack.config, lam).items() if weight != 0
    }
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
        found = torch.autograd.grad(
            weighted_sum(terms).sum(), list(named.values()), allow_unused=True
        )
    for name, g in zip(named, found):
        if g is not None:
            grads[name] += g.numpy() if is_numpy(grads[name]) else g
    return {name: value.detach() for name, (_, value) in terms.items()}
