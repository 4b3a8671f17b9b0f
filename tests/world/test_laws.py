"""The large-world laws: their config forms and errors, SAELens' definitions, the generated tree,
the correlation, the decorrelated directions."""

import math

import numpy as np
import pytest
import torch

from broken_latents.config.schema import (
    ConfigError,
    CorrelationConfig,
    TreeConfig,
    WorldConfig,
)
from broken_latents.config.toml_io import from_dict
from broken_latents.world import laws
from broken_latents.world.directions import cosine_stats, decorrelate
from broken_latents.world.model import World

ZIPF = {"zipf": {"exponent": 0.5, "max": 0.4, "min": 5e-4}}


def test_zipf_runs_from_max_to_min_as_a_power_law():
    rates = np.array(laws.base_rates(WorldConfig(features=100, dim=8, firing=ZIPF)))
    assert rates[0] == pytest.approx(0.4) and rates[-1] == pytest.approx(5e-4)
    assert np.all(np.diff(rates) < 0)
    # affine in 1/sqrt(rank): equal steps in 1/sqrt(rank) give equal steps in rate
    u = 1 / np.sqrt(np.arange(1, 101))
    assert np.allclose(
        np.diff(rates) / np.diff(u), (rates[0] - rates[-1]) / (u[0] - u[-1]), rtol=1e-4
    )


def test_random_law_is_seeded_and_stays_in_range():
    spec = {"random": {"min": 0.01, "max": 0.2}}
    a = laws.base_rates(WorldConfig(features=50, dim=8, firing=spec, seed=3))
    b = laws.base_rates(WorldConfig(features=50, dim=8, firing=spec, seed=3))
    c = laws.base_rates(WorldConfig(features=50, dim=8, firing=spec, seed=4))
    assert a == b and a != c and 0.01 <= min(a) and max(a) <= 0.2


def test_folded_normal_stds_are_the_absolute_of_a_seeded_normal():
    world = WorldConfig(
        features=2000, dim=8, magnitude_std={"folded_normal": {"mean": 0.5, "std": 0.5}}, seed=1
    )
    stds = np.array(laws.magnitude_stds(world))
    gen = torch.Generator().manual_seed(2)  # SAELens: seed + 1
    assert np.allclose(stds, torch.abs(0.5 + 0.5 * torch.randn(2000, generator=gen)).numpy())
    assert stds.min() >= 0 and stds.mean() == pytest.approx(
        0.5 * math.sqrt(2 / math.pi) * math.exp(-0.5) + 0.5 * (1 - 2 * 0.1587), abs=0.03
    )


@pytest.mark.parametrize(
    "world, field",
    [
        (dict(firing={"zipf": {"exponent": 0.5, "max": 0.4}}), "world.firing.zipf"),
        (
            dict(firing={"zipf": {"exponent": -1, "max": 0.4, "min": 0.1}}),
            "world.firing.zipf.exponent",
        ),
        (dict(firing={"zipf": {"exponent": 1, "max": 0.1, "min": 0.4}}), "world.firing.zipf"),
        (dict(firing={"random": {"min": 0.3, "max": 2.0}}), "world.firing.random"),
        (dict(firing={"poisson": 3}), "world.firing"),
        (
            dict(magnitude_std={"folded_normal": {"mean": 0.5, "std": 0}}),
            "world.magnitude_std.folded_normal.std",
        ),
        (dict(bias=-1.0), "world.bias"),
        (dict(tree={"roots": 0}), "world.tree.roots"),
        (dict(tree={"branching": 1}), "world.tree.branching"),
        (dict(tree={"mutually_exclusive": 1.5}), "world.tree.mutually_exclusive"),
        (dict(correlation={"rank": 0}), "world.correlation.rank"),
        (
            dict(
                tree={"roots": 1, "branching": 2, "depth": 1},
                hierarchy=[{"parent": 1, "children": [5]}],
            ),
            "world.hierarchy.0",
        ),
    ],
)
def test_bad_laws_name_their_field(world, field):
    with pytest.raises(ConfigError) as err:
        from_dict(WorldConfig, {"features": 20, "dim": 8, **world}, "world")
    assert err.value.field == field, str(err.value)


def test_tree_is_laid_out_breadth_first_with_saelens_exclusion_and_compensation():
    tree = TreeConfig(
        roots=2,
        branching=3,
        depth=2,
        mutually_exclusive=1.0,
        compensate_probabilities=True,
        scale_children_by_parent=True,
    )
    roots = laws.generate_tree(40, tree, seed=0)
    assert [r.feature for r in roots] == [0, 1]
    assert [c.feature for c in roots[0].children] == [2, 3, 4] and [
        c.feature for c in roots[1].children
    ] == [5, 6, 7]
    assert [c.feature for c in roots[0].children[0].children] == [8, 9, 10]
    s = laws.build_structure(40, roots, [])
    assert (
        s.parent_N[8] == 2 and s.parent_N[2] == 0 and s.parent_N[0] == -1 and s.parent_N[30] == -1
    )
    assert s.depth_N[8] == 2 and s.groups == 8  # every parent (2 roots + 6 children) is exclusive
    assert s.group_N[2] == s.group_N[4] != s.group_N[5] and s.rescale_N[8]
    rates = np.full(40, 0.1)
    factor = laws.compensation(rates, roots)
    assert factor[0] == 1.0 and factor[2] == pytest.approx(1 / 0.1 * (1 + 0.2 / 0.1))


def test_correlation_keeps_unit_diagonal_and_caps_rows():
    factor, diag = laws.low_rank_correlation(
        500, rank=25, scale=0.3, seed=0
    )  # rank scale^2 = 2.25: most rows capped
    assert np.allclose((factor**2).sum(1) + diag, 1.0, atol=1e-5) and diag.min() >= 0.01 - 1e-6


def test_decorrelation_lowers_the_max_cos_of_random_directions():
    V = laws.random_directions_and_bias(600, 32, 0.0, seed=0)[0]
    before, after = cosine_stats(V), cosine_stats(decorrelate(V, steps=5))
    assert after[1] < 0.75 * before[1]  # the worst pair
    assert after[0] < 1.1 * before[0]  # the bulk stays near random


def test_worlds_past_the_search_budget_take_decorrelated_random_directions(monkeypatch):
    from broken_latents.world import model

    monkeypatch.setattr(model, "SEARCH_BUDGET", 0.0)  # as if 300 x 10 were past the budget
    directions = model.feature_directions(300, 10, seed=0)
    start = laws.random_directions_and_bias(300, 10, 0.0, seed=0)[0]
    assert directions.shape == (300, 10) and torch.allclose(directions.norm(dim=1), torch.ones(300))
    assert cosine_stats(directions)[1] < cosine_stats(start)[1]


def test_bias_has_its_norm_and_shifts_every_input():
    world = World.build(WorldConfig(features=8, dim=16, firing=0.0, bias=0.5))
    assert float(world.bias_D.norm()) == pytest.approx(0.5)
    x = world.inputs(torch.zeros(1, 8, 3))
    assert torch.allclose(x, world.bias_D.expand(1, 3, 16))


def test_synthbench_laws_give_saelens_world_to_the_number():
    """The committed folder was written by SAELens from SynthSAEBench-16k's laws at 256 x 32, seed 7: ours,
    built from the same laws, has the same rates (compensated), magnitudes, tree, copula factor and bias."""
    from pathlib import Path

    from broken_latents.experiments.synthbench import synthbench_world

    folder = Path(__file__).parent / "data" / "saelens-256x32"
    ours = World.build(synthbench_world(256, 32, seed=7))
    theirs = World.build(WorldConfig(load=str(folder)))
    assert torch.allclose(ours.rates_N, theirs.rates_N, rtol=1e-5)
    assert torch.allclose(ours.magnitudes_N.float(), theirs.magnitudes_N.float())
    assert torch.allclose(ours.magnitude_stds_N.float(), theirs.magnitude_stds_N.float())
    assert np.array_equal(ours.structure.parent_N, theirs.structure.parent_N)
    assert np.array_equal(ours.structure.group_N >= 0, theirs.structure.group_N >= 0)
    assert np.array_equal(ours.structure.rescale_N, theirs.structure.rescale_N)
    assert np.allclose(ours.correlation[0], theirs.correlation[0]) and np.allclose(
        ours.correlation[1], theirs.correlation[1]
    )
    assert torch.allclose(ours.bias_D, theirs.bias_D, atol=1e-6)


def test_designs_large_world_keys_parse_as_written(tmp_path):
    """DESIGN.md's commented large-world keys, uncommented, are a valid [world]."""
    from broken_latents.config.toml_io import load_toml

    path = tmp_path / "big.toml"
    path.write_text("""name = "big"
[world]
features = 600
dim = 64
firing = { zipf = { exponent = 0.5, max = 0.4, min = 5e-4 } }
magnitude_std = { folded_normal = { mean = 0.5, std = 0.5 } }
bias = 0.5
[world.tree]
roots = 4
branching = 4
depth = 3
mutually_exclusive = 1.0
mutually_exclusive_min_depth = 0
compensate_probabilities = true
scale_children_by_parent = true
[world.correlation]
rank = 25
scale = 0.1
""")
    world = load_toml(path).world
    assert world.tree == TreeConfig(
        4, 4, 3, 1.0, 0, True, True
    ) and world.correlation == CorrelationConfig(25, 0.1)
    assert world.sparse and world.bias == 0.5
