"""Worlds: directions meet their bounds, measured firing rates match the config, the post's ranking."""

import numpy as np
import pytest
import torch

from broken_latents.config.schema import HierarchyConfig, WorldConfig
from broken_latents.experiments import narrow_world
from broken_latents.world.stream import DataStream
from broken_latents.world.model import World, feature_directions, max_abs_cos, welch_bound


def test_orthonormal_when_room():
    F = feature_directions(20, 50, seed=3)
    assert torch.allclose(F @ F.T, torch.eye(20), atol=1e-5)


@pytest.mark.parametrize("dim", [1, 2, 4, 19, 30])
@pytest.mark.parametrize("seed", range(8))
def test_one_more_feature_than_dims_is_the_exact_simplex_frame(dim, seed):
    F = feature_directions(dim + 1, dim, seed).double()
    cos = F @ F.T
    assert torch.allclose(cos.diagonal(), torch.ones(dim + 1, dtype=torch.float64), atol=1e-6)
    off = (cos - torch.eye(dim + 1, dtype=torch.float64)).abs() + torch.eye(
        dim + 1, dtype=torch.float64
    ) / dim
    assert torch.allclose(off, torch.full_like(off, 1 / dim), atol=1e-6)  # every |cos| = 1/dim
    assert max_abs_cos(F) == pytest.approx(welch_bound(dim + 1, dim), abs=1e-6)


def test_simplex_sign_pattern_depends_on_the_seed():
    signs = {
        tuple(
            torch.sign(feature_directions(20, 19, seed) @ feature_directions(20, 19, seed).T)
            .flatten()
            .tolist()
        )
        for seed in range(6)
    }
    assert len(signs) == 6


@pytest.mark.parametrize(
    "features, dim, within",
    [
        # the yardstick, plain normalised descent on the p-norm: ~1.10x (40 in 20), ~1.17x (100 in 30)
        (40, 20, 1.10),
        pytest.param(100, 30, 1.17, marks=pytest.mark.slow),
        (30, 10, 1.18),
        (12, 6, 1.15),
        pytest.param(150, 40, 1.20, marks=pytest.mark.slow),
    ],
)
def test_search_gets_near_the_welch_bound_for_every_seed(features, dim, within):
    ratios = [
        max_abs_cos(feature_directions(features, dim, seed)) / welch_bound(features, dim)
        for seed in range(6)
    ]
    assert max(ratios) <= within, ratios


def test_spread_directions_are_unit_norm():
    F = feature_directions(40, 20, 0)
    assert torch.allclose(F.norm(dim=1), torch.ones(40), atol=1e-5)


def test_welch_bound_known_values():
    assert welch_bound(20, 19) == pytest.approx(1 / 19)
    assert welch_bound(40, 20) == pytest.approx((20 / (20 * 39)) ** 0.5)
    assert welch_bound(5, 5) == 0.0


def _measured_rates(config: WorldConfig, samples: int = 400_000) -> np.ndarray:
    world = World.build(config)
    f = DataStream(world, [0], samples, chunk=1).next()[0]
    return (f > 0).float().mean(1).numpy()


@pytest.mark.parametrize(
    "hierarchy",
    [
        [HierarchyConfig(parent=0, children=[1, 2], mode="force")],
        [HierarchyConfig(parent=0, children=[1, 2], mode="conditional")],
        # nested: 3 forces 1, which forces 0; 4 fires only inside 2
        [
            HierarchyConfig(parent=0, children=[1]),
            HierarchyConfig(parent=1, children=[3]),
            HierarchyConfig(parent=2, children=[4], mode="conditional"),
        ],
    ],
)
def test_measured_rates_match_marginals(hierarchy):
    config = WorldConfig(features=5, dim=8, firing=[0.2, 0.1, 0.3, 0.15, 0.4], hierarchy=hierarchy)
    expected = World.build(config).marginal_rates().numpy()
    assert np.allclose(_measured_rates(config), expected, atol=0.004)


def test_hierarchy_rules_hold_in_every_sample():
    config = WorldConfig(
        features=4,
        dim=8,
        firing=0.3,
        hierarchy=[
            HierarchyConfig(parent=0, children=[1], mode="force"),
            HierarchyConfig(parent=2, children=[3], mode="conditional"),
        ],
    )
    f = DataStream(World.build(config), [0], 50_000, chunk=1).next()[0] > 0
    assert not (f[1] & ~f[0]).any()  # a forcing child never fires without its parent
    assert not (f[3] & ~f[2]).any()  # a conditional child never fires without its parent
    assert (f[0] & ~f[1]).any()  # the parent still fires alone


def test_conditional_child_rate_is_given_the_parent():
    config = WorldConfig(
        features=4,
        dim=8,
        firing=[0.3, 0.4, 0.4, 0.2],
        hierarchy=[HierarchyConfig(parent=0, children=[1, 2], mode="conditional")],
    )
    f = DataStream(World.build(config), [0], 200_000, chunk=1).next()[0] > 0
    given_parent = f[1][f[0]].float().mean().item()
    assert given_parent == pytest.approx(0.4, abs=0.01)


def test_narrow_world_rankings_match_post():
    world = World.build(narrow_world())
    ranking = world.expected_mse_ranking()
    assert sorted(ranking[:5]) == [4, 5, 6, 7, 8] and ranking[0] == 6
    p, m = 0.3 * 7 / 20, 20 - 6  # p_i = 0.3 (i + 1) / 20
    assert world.expected_mse()[6].item() == pytest.approx(p * m * m, rel=1e-5)
    # what an SAE with a decoder bias really ranks by: the same top 5, then 3 clearly ahead of 9
    # (the post's "feature 3 as well")
    by_variance = world.variance_ranking()
    assert sorted(by_variance[:5]) == [4, 5, 6, 7, 8] and by_variance[5] == 3
    assert world.variance()[6].item() == pytest.approx(p * (1 - p) * m * m, rel=1e-5)
    assert world.variance()[3].item() - world.variance()[9].item() > 0.8


def test_rates_from_001_tie_features_3_and_9_on_variance():
    world = World.build(narrow_world(rates={"linear": [0.01, 0.3]}))
    assert world.variance()[3].item() == pytest.approx(world.variance()[9].item(), abs=0.05)


def test_rates_from_002_split_the_two_rankings():
    world = World.build(narrow_world(rates={"linear": [0.02, 0.3]}))
    assert sorted(world.expected_mse_ranking()[:5]) == [4, 5, 6, 7, 8]
    assert sorted(world.variance_ranking()[:5]) == [3, 4, 5, 6, 7]


def test_streams_are_per_seed():
    world = World.build(WorldConfig(features=6, dim=6))
    alone = DataStream(world, [3], 256).next()[0]
    together = DataStream(world, [0, 1, 2, 3], 256).next()[3]
    assert torch.equal(alone, together)
    assert not torch.equal(DataStream(world, [0], 256).next()[0], alone)


@pytest.mark.parametrize(
    "hierarchy",
    [
        [],
        [HierarchyConfig(parent=4, children=[1, 2], mode="force")],
        [
            HierarchyConfig(parent=0, children=[1, 2], mode="conditional"),
            HierarchyConfig(parent=1, children=[3]),
        ],
    ],
)
@pytest.mark.parametrize(
    "batch, chunk", [(256, 4), (7, 3)]
)  # 7 x 3 x 6 features: an odd count of 32-bit draws
@pytest.mark.parametrize("noise", [0.0, {"linear": [1.0, 0.0]}])
def test_compiled_stream_draws_what_world_sample_draws(hierarchy, batch, chunk, noise):
    """DataStream's compiled sampler gives, bit for bit, what the readable `World.sample` gives
    from the same SFC64 generator, chunk after chunk (so the trained SAEs are the same too).
    Noisy magnitudes go through log and cos, whose last bit numpy and numba may round apart:
    the float32 magnitudes agree to 1e-6 and the firing masks exactly."""
    world = World.build(
        WorldConfig(
            features=6,
            dim=8,
            firing={"linear": [0.05, 0.6]},
            magnitude={"linear": [3.0, 1.0]},
            magnitude_std=noise,
            hierarchy=hierarchy,
        )
    )
    seeds = [0, 5]
    stream = DataStream(world, seeds, batch, device=None, chunk=chunk)
    drawn_CRNB = np.stack([stream.next() for _ in range(2 * chunk)])
    for r, seed in enumerate(seeds):
        rng = np.random.Generator(np.random.SFC64([0, seed]))
        expected = [
            world.sample(rng, chunk * batch).reshape(6, chunk, batch).transpose(1, 0, 2)
            for _ in range(2)
        ]
        np.testing.assert_array_equal(drawn_CRNB[:, r] > 0, np.concatenate(expected) > 0)
        np.testing.assert_allclose(drawn_CRNB[:, r], np.concatenate(expected), rtol=1e-6, atol=1e-6)
        if not world.noisy:
            np.testing.assert_array_equal(drawn_CRNB[:, r], np.concatenate(expected))


def test_noisy_magnitudes_have_the_moments_of_a_clipped_normal():
    """Known answers: M = max(m + s Z, 0) has E[M] = m Phi(m/s) + s phi(m/s) and
    E[M^2] = (m^2 + s^2) Phi(m/s) + m s phi(m/s); expected_mse and variance follow from them."""
    mags, stds = [2.0, 1.0, 1.0, 3.0], [0.0, 0.3, 1.0, 0.9]
    world = World.build(
        WorldConfig(
            features=4, dim=4, firing=[0.5, 0.4, 0.6, 0.3], magnitude=mags, magnitude_std=stds
        )
    )
    f = DataStream(world, [0], 400_000, chunk=1).next()[0].double()  # [N, B]
    fired = f > 0
    mean, square = world.magnitude_moments()
    assert mean[2] == pytest.approx(
        1.0 * 0.8413447 + 1.0 * 0.2419707, rel=1e-5
    )  # m = s = 1: Phi(1), phi(1)
    for n in range(4):
        # a clipped draw of exactly 0 reads as not firing: compare the moments over all samples
        rate = float(world.marginal_rates()[n])
        assert float(f[n].mean()) == pytest.approx(rate * float(mean[n]), rel=0.01)
        assert float((f[n] ** 2).mean()) == pytest.approx(float(world.expected_mse()[n]), rel=0.01)
        assert float(f[n].var()) == pytest.approx(float(world.variance()[n]), rel=0.015)
    assert float(f[0][fired[0]].std()) == 0.0  # std 0 keeps the exact magnitude
    assert float(f[1][fired[1]].std()) == pytest.approx(0.3, rel=0.02)


def test_exact_worlds_draw_what_they_drew_before_noise_existed():
    """magnitude_std = 0 takes no extra random words: every registered result stays as it was."""
    exact = World.build(WorldConfig(features=5, dim=5, firing=0.3))
    words = np.random.Generator(np.random.SFC64([0, 3])).bit_generator.random_raw(
        3
    )  # 5 x 1 bits: 3 words
    f = exact.sample(np.random.Generator(np.random.SFC64([0, 3])), 1)
    expected = (words.view(np.uint32)[:5] < exact._thresholds_N1[:, 0]).astype(np.float32)
    np.testing.assert_array_equal(f[:, 0], expected)


def test_prefetching_stream_draws_the_same_batches():
    """The sampling thread reuses a ring of buffers; every batch, taken one step at a time as
    training does, is still what a stream without the thread draws (over several laps)."""
    world = World.build(WorldConfig(features=6, dim=8, firing={"linear": [0.05, 0.6]}))
    plain = DataStream(world, [0, 1], 32, device=None, chunk=2)
    with DataStream(world, [0, 1], 32, device=None, chunk=2, prefetch=True) as threaded:
        for _ in range(40):
            np.testing.assert_array_equal(threaded.next(), plain.next())
