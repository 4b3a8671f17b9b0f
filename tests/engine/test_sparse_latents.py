"""The sparse-latent gradients (engine/sparse_latents.py) equal autograd's, by torch index ops and by
the numba kernels; a sparse world trains the same under them as under autograd, and learns its features."""

import itertools

import numpy as np
import pytest
import torch

from broken_latents.analysis.measure import cosine
from broken_latents.config.schema import (
    AuxConfig,
    architecture_options,
    ExperimentConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.engine import sparse_latents
from broken_latents.saes import build_sae, weighted_sum
from broken_latents.training.engines import CompiledSparseLatentsEngine, SparseLatentsEngine
from broken_latents.training.loop import (
    choose_engine,
    new_stacks,
    run_training,
    single_torch_thread,
    train,
)
from broken_latents.world.model import World

S, B, D, K = 2, 24, 6, 8


def _sae_configs():
    """Every architecture x activation twice: with its defaults, and with Matryoshka widths, the aux
    loss and the other L1 weighting all on (each term's gradient is checked alone in one, together in
    the other)."""
    for architecture, activation in itertools.product(
        ("tied", "untied"), ("relu", "topk", "batchtopk")
    ):
        options = architecture_options(architecture)
        for extras in (False, True):
            yield SAEConfig(
                label="s",
                architecture=architecture,
                latents=K,
                activation=activation,
                k=3 if activation != "relu" else None,
                l1=0.3,
                matryoshka_widths=[2, 5, K] if extras else None,
                aux=AuxConfig(coefficient=2.0) if extras else None,
                options=options(l1_decoder_norm=not options().l1_decoder_norm)
                if extras
                else options(),
            )


CONFIGS = list(_sae_configs())


def _autograd(sae, x_SBD, tau_SK, lam):
    terms, _ = sae.loss_terms(x_SBD, tau_SK, lam)
    loss = weighted_sum(terms).mean(-1).sum()
    named = dict(sae.named_parameters())
    grads = torch.autograd.grad(loss, list(named.values()))
    return {name: value.detach().mean(-1) for name, (_, value) in terms.items()}, dict(
        zip(named, grads)
    )


@pytest.mark.parametrize("path", ["torch", "numba", "dense"])
@pytest.mark.parametrize("config", CONFIGS, ids=[f"c{i}" for i in range(len(CONFIGS))])
def test_gradients_equal_autograd(config, path, monkeypatch):
    """The list path (torch index ops, numba) and the dense one (products, for many active latents)."""
    monkeypatch.setattr(sparse_latents, "DENSE_FROM", -1.0 if path == "dense" else 1.0)
    compiled = path == "numba"
    gen = torch.Generator().manual_seed(0)
    sae = build_sae(config, S, D, [0, 1], "random")
    with torch.no_grad():
        for p in sae.parameters():  # away from the start: biases on, rows of several norms
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    x_SBD = torch.randn(S, B, D, generator=gen) + 0.5
    tau_SK = 0.5 * torch.rand(S, K, generator=gen)
    lam = 0.7 if config.aux else 0.0
    weights = sae.loss_weights(config, lam)
    params = {name: p.detach().clone() for name, p in sae.named_parameters()}
    out = {name: torch.full_like(p, float("nan")) for name, p in params.items()}  # overwritten
    losses, h_max, entries = sparse_latents.loss_and_grads(
        sparse_latents.SparseArchitecture.of(sae),
        params,
        x_SBD,
        weights,
        tau_SK,
        True,
        out,
        compiled,
    )
    expected_losses, expected = _autograd(sae, x_SBD, tau_SK, lam)
    assert set(losses) == set(expected_losses)
    for name in expected_losses:
        torch.testing.assert_close(
            losses[name], expected_losses[name], rtol=1e-4, atol=1e-5, msg=name
        )
    for name in expected:
        torch.testing.assert_close(out[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    h = sae(x_SBD, tau_SK, training=True)[0]
    torch.testing.assert_close(h_max, h.amax(1))
    if path == "dense":
        torch.testing.assert_close(entries.h_SBK, h)
    else:
        assert int(entries.offsets[-1]) == int((h > 0).sum())
    if config.activation == "batchtopk":  # the threshold's estimate: the smallest kept activation
        torch.testing.assert_close(
            entries.kept_min_S, torch.where(h > 0, h, torch.inf).flatten(1).amin(-1)
        )


def test_batch_top_keeps_exactly_the_largest_with_ties():
    pre = torch.tensor(
        [[[3.0, 1.0, 1.0, -1.0], [1.0, 2.0, 0.0, 1.0]]]
    )  # four 1.0s tie for two places
    entries = sparse_latents.compiled_keep(pre, "batchtopk", 2)  # k x B = 4 kept
    assert entries.offsets.tolist() == [0, 3, 4] and entries.latent.tolist() == [0, 1, 2, 1]
    assert float(entries.kept_min_S[0]) == 1.0
    few = sparse_latents.compiled_keep(-pre, "batchtopk", 2)  # one positive value only
    assert few.latent.tolist() == [3] and few.value.tolist() == [1.0]


@pytest.mark.parametrize("activation", ["relu", "topk", "batchtopk"])
@pytest.mark.parametrize("guess", [float("nan"), 0.1, 1.5, 100.0])
def test_kernels_keep_what_torch_keeps(activation, guess):
    """The numba selectors against torch's topk, BatchTopK from any starting guess of its threshold."""
    pre = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(1))
    expected = sparse_latents.torch_keep(pre, activation, 3)
    found = sparse_latents.compiled_keep(pre, activation, 3, torch.full((2,), guess))
    for name in ("offsets", "latent", "value", "kept_min_S"):
        a, b = getattr(found, name), getattr(expected, name)
        assert (a is None and b is None) or torch.equal(a, b), name


WORLD = WorldConfig(
    features=10,
    dim=12,
    firing=0.15,
    magnitude={"linear": [2.0, 1.0]},
    bias=0.5,  # a law only the sparse sampler implements: the world is sparse
)


def _config(saes, engine, samples, lr=3e-3, batch=128):
    return ExperimentConfig(
        name="t",
        world=WORLD,
        sae=saes,
        train=TrainConfig(
            samples=samples, batch_size=batch, lr=lr, seeds=2, engine=engine, eval_samples=1000
        ),
    )


def test_auto_picks_the_sparse_latent_engine_on_sparse_worlds():
    config = _config(CONFIGS[:1], "auto", 1000)
    assert choose_engine(config, "cpu") is CompiledSparseLatentsEngine
    assert choose_engine(config, "cuda") is SparseLatentsEngine


@pytest.mark.parametrize("engine", [CompiledSparseLatentsEngine, SparseLatentsEngine])
def test_training_equals_autograd(engine):
    """Same seeds, a few steps: every parameter (and BatchTopK's threshold) as autograd's; the
    JumpReLU stack, not covered, trains by autograd beside the others. The torch engine (a GPU's)
    runs here on the CPU."""
    saes = [
        SAEConfig(
            label="batchtopk", architecture="untied", latents=16, activation="batchtopk", k=2
        ),
        SAEConfig(label="tied-relu", architecture="tied", latents=16, l1=0.1),
        SAEConfig(
            label="matryoshka",
            architecture="untied",
            latents=16,
            activation="batchtopk",
            k=2,
            matryoshka_widths=[4, 16],
        ),
        SAEConfig(
            label="topk-aux", latents=16, activation="topk", k=2, aux=AuxConfig(window_batches=2)
        ),
        SAEConfig(label="jumprelu", architecture="untied", latents=16, activation="jumprelu"),
    ]
    config = _config(saes, "auto", 1280)
    with single_torch_thread("cpu"):
        world = World.build(config.world)
        fast = run_training(
            config, world, new_stacks(config, world.config.dim, "cpu"), engine, "cpu", False
        )
    reference = train(_config(saes, "autograd", 1280), progress=False)
    for a, b in zip(fast.stacks, reference.stacks):
        for (name, p), q in zip(a.sae.named_parameters(), b.sae.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{a.config.label} {name}")
            assert p.is_contiguous(), name  # the compiled engine's transposed W_enc laid back out
        torch.testing.assert_close(
            a.sae.batchtopk_threshold_S, b.sae.batchtopk_threshold_S, equal_nan=True
        )
    for label in ("mse", "l1"):
        torch.testing.assert_close(
            fast.history.means(-1)["batchtopk"][label],
            reference.history.means(-1)["batchtopk"][label],
        )


def test_a_sparse_world_is_learned(monkeypatch):
    """A TopK SAE with one latent per feature finds every feature's direction (cos >= 0.95), on the
    list path (k / K = 0.2 would otherwise take the dense one)."""
    monkeypatch.setattr(sparse_latents, "DENSE_FROM", 1.0)
    sae = SAEConfig(label="topk", architecture="untied", latents=10, activation="topk", k=2)
    result = train(_config([sae], "auto", 60_000, lr=1e-2), progress=False)
    cos_KN = cosine(result.stacks[0].sae.W_dec_SKD[0].detach(), result.world.directions_ND)
    assert cos_KN.amax(0).min() >= 0.95, cos_KN.amax(0)


@pytest.mark.parametrize("values", ["normal", "ties", "one value", "with inf"])
def test_binned_selection_finds_the_kth_largest(values):
    """The histogram selection of a batch's threshold against a sort, on many values with ties."""
    rng = np.random.default_rng(3)
    a = {
        "normal": rng.standard_normal(50_000),
        "ties": rng.integers(0, 30, 50_000) / 7,  # every value repeated
        "one value": np.full(5_000, 2.5),
        "with inf": np.concatenate([rng.random(5_000), [np.inf, np.inf]]),
    }[values].astype(np.float32)
    before = a.copy()
    for k in (1, 2, 37, len(a) // 3, len(a) - 1, len(a)):
        assert sparse_latents._kth_largest_binned(a, len(a), k) == np.sort(a)[::-1][k - 1], k
    np.testing.assert_array_equal(a, before)  # left as it was
