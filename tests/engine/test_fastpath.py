"""The fast path's hand-derived gradients equal autograd's, for every registered architecture,
activation and loss term; an architecture without them is trained by autograd."""

import dataclasses
import typing

import numpy as np
import pytest
import torch

from broken_latents.config.schema import (
    AuxConfig,
    ExperimentConfig,
    HierarchyConfig,
    SAEConfig,
    WorldConfig,
)
from broken_latents.engine.backend import as_torch
from broken_latents.engine import kernel
from broken_latents.engine.fastpath import (
    Architecture,
    WorldGeometry,
    hand_gradients,
    loss_and_grads,
    params_of,
)
from broken_latents.saes import ARCHITECTURES, build_sae, weighted_sum
from broken_latents.training.loop import choose_engine
from broken_latents.world.model import World

ACTIVATIONS = typing.get_args(typing.get_type_hints(SAEConfig)["activation"])
LATENTS = 5
MATRYOSHKA = [None, [1, LATENTS], [1, 2, LATENTS]]
"""Matryoshka widths: off, two prefixes, three."""


def _variants(architecture):
    """(architecture, options): its defaults, then each bool / Literal field it owns set to every
    other value, the rest default; so an option that changes the gradients cannot skip this test."""
    options = ARCHITECTURES[architecture].Options
    yield architecture, options()
    for f in dataclasses.fields(options):
        hint = typing.get_type_hints(options)[f.name]
        values = (
            (False, True)
            if hint is bool
            else typing.get_args(hint)
            if typing.get_origin(hint) is typing.Literal
            else ()
        )
        for value in values:
            if value != f.default:
                yield architecture, options(**{f.name: value})


VARIANTS = [
    variant for architecture in sorted(ARCHITECTURES) for variant in _variants(architecture)
]
VARIANT_IDS = [
    f"{a}"
    + "".join(
        f"-{k}={v}"
        for k, v in dataclasses.asdict(o).items()
        if v != dataclasses.asdict(type(o)())[k]
    )
    for a, o in VARIANTS
]


def _sae_config(variant, activation, aux, widths=None):
    architecture, options = variant
    return SAEConfig(
        label="s",
        architecture=architecture,
        latents=LATENTS,
        activation=activation,
        l1=0.05,
        aux=AuxConfig() if aux else None,
        k=2 if activation in ("topk", "batchtopk") else None,
        matryoshka_widths=widths,
        options=options,
    )


def _setup(architecture, activation, aux, dim=12, features=8, batch=64, widths=None):
    torch.manual_seed(0)
    world = World.build(
        WorldConfig(
            features=features,
            dim=dim,
            firing=0.4,
            magnitude={"linear": [3.0, 1.0]},
            hierarchy=[HierarchyConfig(parent=0, children=[1, 2])],
        )
    )
    config = _sae_config(architecture, activation, aux, widths)
    sae = build_sae(config, n_saes=3, dim=dim, seeds=[0, 1, 2], init="random").double()
    with torch.no_grad():  # move off the symmetric start so every term is exercised
        for p in sae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    directions = world.directions_ND.double()
    if dim >= features:  # exactly orthonormal in float64 too, so the fast path's shortcut is exact
        directions = torch.linalg.qr(directions.T).Q.T
    world = World(world.config, directions, world.rates_N.double(), world.magnitudes_N.double())
    f = torch.from_numpy(
        np.stack([world.sample(np.random.default_rng(s), batch) for s in range(3)])
    ).double()  # [S, N, B]
    return world, sae, config, f


def _combinations():
    """Every (architecture variant, activation, aux, Matryoshka widths) with a readable id, split by
    whether the SAE declares hand-derived gradients: only those have anything to compare."""
    with_hand, without = [], []
    for variant, variant_id in zip(VARIANTS, VARIANT_IDS):
        for activation in ACTIVATIONS:
            for aux in (False, True):
                for widths in MATRYOSHKA:
                    case = pytest.param(
                        variant,
                        activation,
                        aux,
                        widths,
                        id=f"{variant_id}-{activation}-aux={aux}-{widths}",
                    )
                    declared = (
                        hand_gradients(_sae_config(variant, activation, aux, widths)) is not None
                    )
                    (with_hand if declared else without).append(case)
    return with_hand, without


HAND_DERIVED, WITHOUT_HAND_GRADIENTS = _combinations()


def test_combinations_without_hand_gradients_train_by_autograd():
    """Where no hand gradients are declared, "auto" trains by autograd (and the gradient tests
    below have nothing to compare, so they are not generated)."""
    assert HAND_DERIVED and WITHOUT_HAND_GRADIENTS
    for case in WITHOUT_HAND_GRADIENTS:
        config = _sae_config(*case.values)
        assert choose_engine(ExperimentConfig(name="t", sae=[config]), "cpu").name == "autograd", (
            case.id
        )


# Every registered architecture and option: a new one cannot leave this test out.
@pytest.mark.parametrize("architecture, activation, aux, widths", HAND_DERIVED)
@pytest.mark.parametrize("dim", [12, 6])  # orthonormal features, and superposition
# the compiled kernel against autograd is the slow tier; test_kernel_sums_over_several_blocks runs it in the fast one
@pytest.mark.parametrize(
    "backend", ["numpy", "torch", pytest.param("compiled", marks=pytest.mark.slow)]
)
def test_fast_gradients_match_autograd(architecture, activation, aux, widths, dim, backend):
    world, sae, config, f = _setup(architecture, activation, aux, dim=dim, widths=widths)
    x = world.inputs(f)
    tau = torch.rand(3, 5, dtype=torch.float64) * 2 if aux else None
    lam = 7.0 if aux else 0.0

    terms, h_expected = sae.loss_terms(x, tau, lam)
    sae.zero_grad()
    weighted_sum(terms).mean(-1).sum().backward()
    expected = {name: p.grad.clone() for name, p in sae.named_parameters()}

    arrays = {"torch": lambda t: t}.get(backend, lambda t: t.numpy())
    array_backend = "torch" if backend == "torch" else "numpy"
    gradients = kernel.loss_and_grads if backend == "compiled" else loss_and_grads
    losses, h, grads = gradients(
        Architecture.of(sae),
        params_of(sae, array_backend),
        WorldGeometry.of(world.directions_ND, array_backend),
        arrays(f),
        sae.loss_weights(config, lam),
        None if tau is None else arrays(tau),
        want_loss=True,
    )
    assert set(grads) == set(expected)
    for name, g in grads.items():
        torch.testing.assert_close(as_torch(g), expected[name], rtol=1e-8, atol=1e-10, msg=name)
    assert set(losses) == set(terms) - {"aux"}
    for name in losses:
        torch.testing.assert_close(
            as_torch(losses[name]), terms[name][1].detach().mean(-1), msg=name
        )
    if backend == "compiled":  # the kernel returns only what training needs of h: its batch max
        torch.testing.assert_close(as_torch(h), h_expected.detach().amax(1))
    else:
        torch.testing.assert_close(as_torch(h).transpose(1, 2), h_expected.detach())


@pytest.mark.parametrize("architecture, activation, aux, widths", HAND_DERIVED)
def test_kernel_sums_over_several_blocks(architecture, activation, aux, widths):
    """A batch longer than the kernel's block (two whole blocks and a partial one) gives the
    gradients and losses of the array path, which takes the whole batch at once."""
    world, sae, config, f = _setup(
        architecture, activation, aux, batch=2 * kernel.BLOCK + 37, widths=widths
    )
    tau = np.random.default_rng(0).random((3, 5)) * 2 if aux else None
    arguments = (
        Architecture.of(sae),
        params_of(sae, "numpy"),
        WorldGeometry.of(world.directions_ND, "numpy"),
        f.numpy(),
        sae.loss_weights(config, 7.0 if aux else 0.0),
        tau,
    )
    losses, h, grads = loss_and_grads(*arguments, want_loss=True)
    kernel_losses, h_max, kernel_grads = kernel.loss_and_grads(*arguments, want_loss=True)
    for name, g in grads.items():
        np.testing.assert_allclose(kernel_grads[name], g, rtol=1e-9, atol=1e-11, err_msg=name)
    assert set(kernel_losses) == set(losses)
    for name in losses:
        np.testing.assert_allclose(kernel_losses[name], losses[name], rtol=1e-9, err_msg=name)
    np.testing.assert_allclose(h_max, h.max(-1))
