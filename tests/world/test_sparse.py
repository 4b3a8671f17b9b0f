"""The sparse sampler draws what the dense reference draws (rates, co-occurrence, L0, magnitudes), and
a SAELens folder loads to SAELens' own distribution."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from broken_latents.config.schema import (
    ConfigError,
    CorrelationConfig,
    HierarchyConfig,
    TreeConfig,
    WorldConfig,
)
from broken_latents.world.model import World
from broken_latents.world.saelens import export_world
from broken_latents.world.sparse import SparseSampler
from broken_latents.world.stream import DataStream

SAELENS_FOLDER = Path(__file__).parent / "data" / "saelens-256x32"
"""Written by sae_lens 6.54.12's SyntheticModel.save() (SynthSAEBench-16k laws, 256 features in 32 dims);
saelens_samples.json holds statistics of 200,000 of SAELens' own samples of it."""

N = 40_000


def small_world(**changes) -> World:
    """Every law at once on 40 features: tree with exclusion and rescaling, copula, bias, noise, and explicit
    conditional and force relations outside the tree."""
    config = dict(
        features=40,
        dim=24,
        firing={"zipf": {"exponent": 0.5, "max": 0.4, "min": 0.02}},
        magnitude={"linear": [5.0, 4.0]},
        magnitude_std={"folded_normal": {"mean": 0.5, "std": 0.5}},
        tree=TreeConfig(
            roots=2,
            branching=3,
            depth=2,
            mutually_exclusive=0.5,
            compensate_probabilities=True,
            scale_children_by_parent=True,
        ),
        correlation=CorrelationConfig(rank=4, scale=0.3),
        bias=0.5,
        hierarchy=[
            HierarchyConfig(parent=30, children=[31, 32], mode="force"),
            HierarchyConfig(parent=33, children=[34, 35], mode="conditional"),
        ],
    )
    return World.build(WorldConfig(**{**config, **changes}))


def firing_stats(f_BN: np.ndarray):
    on = (f_BN > 0).astype(np.float64)
    return on.mean(0), on.T @ on / len(on), on.sum(1).mean()


def test_sparse_sampler_draws_the_dense_distribution():
    world = small_world()
    assert world.sparse and world.structure.groups >= 1
    batch = SparseSampler(world, [0]).draw(N)
    sparse_f = batch.features_RNB()[0].T.numpy()
    dense_f = world.sample(np.random.default_rng(1), N).T
    (r_s, c_s, l0_s), (r_d, c_d, l0_d) = firing_stats(sparse_f), firing_stats(dense_f)
    se = np.sqrt(2 * r_d * (1 - r_d) / N) + 1e-4
    assert np.abs(r_s - r_d).max() < 4.5 * se.max() and np.abs((r_s - r_d) / se).mean() < 1.2
    assert np.abs(c_s - c_d).max() < 0.01  # co-occurrence, exclusion and forcing included
    assert l0_s == pytest.approx(l0_d, rel=0.02)
    on = r_d > 0.05
    mags_s = sparse_f.sum(0)[on] / (sparse_f > 0).sum(0)[on]
    mags_d = dense_f.sum(0)[on] / (dense_f > 0).sum(0)[on]
    assert np.abs(mags_s - mags_d).max() < 0.15
    # inputs: x = sum of magnitude x direction, plus the bias
    x = batch.x_RBD[0, :500].numpy()
    assert np.allclose(
        x, sparse_f[:500] @ world.directions_ND.numpy() + world.bias_D.numpy(), atol=1e-4
    )


def test_laws_act_as_declared():
    world = small_world(correlation=None)
    f = SparseSampler(world, [0]).draw(N).features_RNB()[0].T.numpy()
    on = f > 0
    s = world.structure
    children = np.flatnonzero(s.parent_N >= 0)
    assert not (
        on[:, children] & ~on[:, s.parent_N[children]]
    ).any()  # a child never fires without its parent
    for g in range(s.groups):
        assert on[:, s.group_N == g].sum(1).max() == 1  # exclusive siblings: one at most
    assert not (on[:, [31, 32]].any(1) & ~on[:, 30]).any()  # force: a child switches its parent on
    # compensation: children keep roughly their law's rate despite gating and exclusion
    base = np.array(laws_rates(world))
    assert np.abs(on[:, 2:5].mean(0) / base[2:5] - 1).max() < 0.35


def laws_rates(world):
    from broken_latents.world import laws

    return laws.base_rates(world.config)


def test_correlation_correlates_firing_and_keeps_rates():
    independent = small_world(tree=None, hierarchy=[], correlation=None, firing=0.2)
    correlated = small_world(
        tree=None, hierarchy=[], correlation=CorrelationConfig(rank=2, scale=0.6), firing=0.2
    )
    r_i, c_i, _ = firing_stats(SparseSampler(independent, [0]).draw(N).features_RNB()[0].T.numpy())
    r_c, c_c, _ = firing_stats(SparseSampler(correlated, [0]).draw(N).features_RNB()[0].T.numpy())
    assert np.abs(r_c - 0.2).max() < 0.015 and np.abs(r_i - 0.2).max() < 0.015
    off = ~np.eye(40, dtype=bool)

    def spread(c, r):
        return np.std((c - np.outer(r, r))[off])

    assert spread(c_c, r_c) > 4 * spread(c_i, r_i)


def test_big_and_lawful_worlds_stream_sparsely_and_small_plain_ones_densely():
    assert not WorldConfig(features=20, dim=50).sparse
    assert WorldConfig(features=1024, dim=50, firing=0.001).sparse
    assert WorldConfig(features=20, dim=50, bias=0.1).sparse
    with DataStream(small_world(), [0, 1], 64) as stream:
        batch = stream.next()
    assert batch.x_RBD.shape == (2, 64, 24) and len(batch.offsets[1]) == 65


def test_saelens_folder_loads_to_saelens_distribution():
    stats = json.loads((SAELENS_FOLDER / "saelens_samples.json").read_text())
    world = World.build(WorldConfig(load=str(SAELENS_FOLDER)))
    assert (world.config.features, world.config.dim) == (256, 32) and world.structure.groups > 0
    batch = SparseSampler(world, [0]).draw(100_000)
    idx, val = batch.indices[0], batch.values[0]
    counts = np.bincount(idx, minlength=256)
    rates, theirs = counts / 100_000, np.array(stats["rates"])
    se = np.sqrt(theirs * (1 - theirs) * (1 / 100_000 + 1 / stats["samples"])) + 1e-5
    assert np.abs((rates - theirs) / se).mean() < 1.2 and np.abs((rates - theirs) / se).max() < 5
    assert len(idx) / 100_000 == pytest.approx(stats["l0"], rel=0.01)
    often = theirs > 0.02
    mags = np.bincount(idx, val, minlength=256)[often] / counts[often]
    assert np.abs(mags - np.array(stats["mean_magnitudes"])[often]).max() < 0.15
    assert np.abs(batch.x_RBD[0].numpy().mean(0) - np.array(stats["x_mean"])).max() < 0.05


def test_load_refuses_other_world_keys_and_bad_folders(tmp_path):
    with pytest.raises(ConfigError) as err:
        WorldConfig(load=str(SAELENS_FOLDER), firing=0.3)
    assert err.value.field == "world.firing" and "world.load" in str(err.value)
    with pytest.raises(ConfigError) as err:
        WorldConfig(load=str(SAELENS_FOLDER), features=99)
    assert err.value.field == "world.features" and "256" in str(err.value)
    with pytest.raises(ConfigError) as err:
        WorldConfig(load=str(tmp_path))
    assert err.value.field == "world.load" and "synthetic_model_config.json" in str(err.value)


def test_export_round_trips_through_the_saelens_format(tmp_path):
    world = small_world(
        hierarchy=[HierarchyConfig(parent=33, children=[34, 35], mode="conditional")]
    )
    folder = export_world(world, tmp_path / "w")
    again = World.build(WorldConfig(load=str(folder)))
    assert torch.equal(again.directions_ND, world.directions_ND) and torch.equal(
        again.rates_N, world.rates_N
    )
    assert torch.allclose(again.magnitudes_N.float(), world.magnitudes_N.float())
    assert torch.allclose(again.magnitude_stds_N.float(), world.magnitude_stds_N.float())
    assert np.array_equal(again.structure.parent_N, world.structure.parent_N)
    assert np.array_equal(again.structure.group_N >= 0, world.structure.group_N >= 0)
    with pytest.raises(ValueError, match="force"):
        export_world(small_world(), tmp_path / "x")


@pytest.mark.skipif(
    importlib.util.find_spec("sae_lens") is None, reason="sae_lens is not installed in this venv"
)
def test_exported_world_samples_as_saelens_samples_it(tmp_path):
    from sae_lens.synthetic import SyntheticModel

    world = small_world(hierarchy=[])
    model = SyntheticModel.load_from_disk(export_world(world, tmp_path / "w"))
    torch.manual_seed(0)
    _, f = model.sample_with_features(N)
    (r_t, _, l0_t), (r_o, _, l0_o) = (
        firing_stats(f.numpy()),
        firing_stats(SparseSampler(world, [0]).draw(N).features_RNB()[0].T.numpy()),
    )
    assert np.abs(r_t - r_o).max() < 0.015 and l0_o == pytest.approx(l0_t, rel=0.02)


def test_sparse_sampler_is_deterministic_per_seed_and_seeds_are_independent():
    world = small_world()
    a, b = SparseSampler(world, [0, 3]).draw(500), SparseSampler(world, [3]).draw(500)
    again = SparseSampler(world, [0, 3]).draw(500)
    for r in range(2):
        assert np.array_equal(a.indices[r], again.indices[r])
        assert np.array_equal(a.values[r], again.values[r])
    assert torch.equal(a.x_RBD, again.x_RBD)
    # seed 3 draws the same beside seed 0 as alone; seed 0 draws something else
    assert np.array_equal(a.indices[1], b.indices[0]) and np.array_equal(a.values[1], b.values[0])
    assert not np.array_equal(a.indices[0][:100], a.indices[1][:100])


def test_tail_table_decides_exactly_as_erfc():
    """`_below_tail` (a table with erfc only where u falls between two points) says u <= P(N > z) exactly
    as erfc does, for u right at the boundary too, and for z off the table."""
    from broken_latents.world.sparse import _below_tail, _upper_tail

    rng = np.random.default_rng(0)
    z = np.concatenate([rng.uniform(-9, 9, 3000), np.arange(-8, 8.01, 1 / 64)[::7]])
    tail = np.array([_upper_tail(v) for v in z])
    for u in (tail * (1 + rng.uniform(-1e-3, 1e-3, len(z))), tail * rng.uniform(0.5, 1.5, len(z))):
        u = np.clip(u, 1e-300, 1.0)
        assert [_below_tail(a, v) for a, v in zip(u, z)] == list(u <= tail)


def test_ziggurat_normals_are_standard_normal():
    from math import erfc, sqrt

    from broken_latents.world.sparse import _normals

    z = np.empty(
        (16_000, 25), np.float32
    )  # the sampler's shape: one row of the copula's factor per sample
    _normals(np.random.SFC64([5, 0]).state["state"]["state"], z)
    z, n = z.ravel(), z.size
    assert abs(z.mean()) < 4 / sqrt(n) and abs(z.var() - 1) < 4 * sqrt(2 / n)
    for c in (
        0.5,
        1.0,
        2.0,
        3.0,
        3.65,
        4.0,
    ):  # 3.65: where the ziggurat's base layer hands over to its tail
        p = erfc(c / sqrt(2))
        assert abs((np.abs(z) > c).mean() - p) < 4 * sqrt(p * (1 - p) / n) + 1e-6


def test_thinning_under_strong_correlation_keeps_rates_and_co_occurrence():
    """Rates down to 0.003 (block skips, empty blocks) under a strong copula (|L|^2 about 0.5): the
    table-bounded thinning gives the dense path's marginal rates and pairwise co-firing rates, each within
    its sampling error (binomial: the correlation coefficient's error is not 1 / sqrt(n) for rare features)."""
    n = 20_000
    world = World.build(
        WorldConfig(
            features=128,
            dim=16,
            firing={"zipf": {"exponent": 0.7, "max": 0.4, "min": 0.003}},
            correlation=CorrelationConfig(rank=4, scale=0.35),
        )
    )
    on_s = (SparseSampler(world, [0]).draw(n).features_RNB()[0].T.numpy() > 0).astype(np.float64)
    on_d = (world.sample(np.random.default_rng(1), n).T > 0).astype(np.float64)
    r_s, r_d = on_s.mean(0), on_d.mean(0)
    se = np.sqrt(2 * r_d * (1 - r_d) / n)
    assert np.abs(r_s - r_d).max() < 4.5 * se.max() and np.abs((r_s - r_d) / se).mean() < 1.2
    c_s, c_d = on_s.T @ on_s / n, on_d.T @ on_d / n
    pairs = np.triu(c_d > 0.002, 1)
    se = np.sqrt(2 * c_d * (1 - c_d) / n)[pairs]
    assert (
        np.abs(c_d - np.outer(r_d, r_d))[pairs] / se
    ).mean() > 3  # firing strongly correlated (measured 3.9)
    z = (c_s - c_d)[pairs] / se
    assert np.abs(z).mean() < 1.1 and np.abs(z).max() < 5  # measured: 0.80 and 3.5
