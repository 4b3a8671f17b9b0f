"""Analysis known answers: peak counting, one-to-one matching, dead latents, firing patterns."""

import numpy as np
import pytest

from broken_latents.analysis.measure import firing_pattern_sets, match_latents
from broken_latents.analysis.peaks import count_peaks
from broken_latents.config.schema import HierarchyConfig, WorldConfig
from broken_latents.analysis.metrics import Match
from broken_latents.world.model import World


def _mixture(centres, counts, spread=0.05, bulk=20_000, seed=0):
    rng = np.random.default_rng(seed)
    parts = [rng.uniform(0, 0.05 * max(centres), bulk)]  # tied latents' weak firing near zero
    parts += [rng.normal(c, spread, n) for c, n in zip(centres, counts)]
    return np.clip(np.concatenate(parts), 0, None)


def test_one_peak_with_ripples_counts_once():
    # one feature at 16 with interference ripples of +-0.8, as a clean tied latent shows
    acts = _mixture([15.2, 16.0, 16.8], [2000, 9000, 1500])
    n, locs = count_peaks(acts)
    assert n == 1 and abs(locs[0] - 16.0) < 0.5


def test_broken_latent_peaks_are_counted():
    # parent alone (weak), child + parent, child + parent + sibling: the 5,7 -> 12 pattern
    acts = _mixture([4.5, 11.4, 15.8], [8000, 1200, 9000])
    n, locs = count_peaks(acts)
    assert n == 3
    assert np.allclose(sorted(locs), [4.5, 11.4, 15.8], atol=0.4)


def test_silent_latent_has_no_peak():
    assert count_peaks(np.zeros(1000)) == (0, [])


def test_matching_is_one_to_one_and_skips_dead():
    cos = np.array([[0.99, 0.10, 0.0], [0.98, 0.20, 0.0], [0.0, 0.0, 0.97]])
    matches = match_latents(cos, live=np.array([True, True, False]))
    assert matches == [Match(latent=0, feature=0, cos=0.99), Match(latent=1, feature=1, cos=0.2)]


def test_firing_pattern_sets_cover_hierarchy():
    world = World.build(
        WorldConfig(features=4, dim=4, hierarchy=[HierarchyConfig(parent=0, children=[1, 2])])
    )
    sets = firing_pattern_sets(world, {3})
    assert [[0], [1], [2], [3], [0, 1], [0, 2], [0, 1, 2]] == sets


@pytest.mark.slow
def test_measure_finds_absorption_in_the_untied_absorbed_solution():
    """Hand-set weights through `measure`: the parent latent (encoder f0 - f1) goes silent when the
    child fires and a combo latent decoding f0 + f1 (a broken match, cos 0.71) carries both."""
    import math

    import torch

    from broken_latents.analysis.measure import measure
    from broken_latents.config.schema import ExperimentConfig, SAEConfig, TrainConfig
    from broken_latents.saes import build_sae
    from broken_latents.training.loop import TrainedStack, TrainResult

    rates = [0.25, 0.05, 0.25, 0.25]
    world_config = WorldConfig(
        features=4,
        dim=8,
        firing=rates,
        magnitude=1.0,
        hierarchy=[HierarchyConfig(parent=0, children=[1], mode="force")],
    )
    sae_config = SAEConfig(label="untied", architecture="untied", latents=4)
    config = ExperimentConfig(
        name="absorbed",
        world=world_config,
        sae=[sae_config],
        train=TrainConfig(seeds=1, eval_samples=100_000),
    )
    world = World.build(world_config)
    f0, f1, f2, f3 = world.directions_ND
    sae = build_sae(sae_config, 1, 8, [0], "random")
    with torch.no_grad():
        sae.W_dec_SKD[0] = torch.stack([f0, (f0 + f1) / math.sqrt(2), f2, f3])
        sae.W_enc_SDK[0] = torch.stack([f0 - f1, f1 * math.sqrt(2), f2, f3]).T
        sae.b_enc_SK.zero_()
        sae.b_dec_SD.zero_()
    result = TrainResult(
        config, world, [0], [TrainedStack(sae_config, sae)], samples=0, train_seconds=1.0
    )
    run = measure(result).runs[0]
    assert run.broken_latents == [1]
    p_child_given_parent = rates[1] / (rates[0] + rates[1] - rates[0] * rates[1])  # 0.174
    assert abs(run.absorption[0] - p_child_given_parent) < 0.01
    assert abs(run.full_absorption[0] - p_child_given_parent) < 0.01
    assert run.absorption[1:] == [0.0, 0.0, 0.0]  # the broken match still carries its own feature
    assert run.hedging == [0.0, 0.7071, 0.0, 0.0]  # the combo latent carries the child's parent
    # Detection (issue 18): the truth calls the combo latent (cos 0.71) broken; the parent latent has a
    # clean decoder and is silent only when the rare child fires: firing F1 2a / (2a + c) = 0.905 with a
    # the parent-alone rate, c the child's, just above 0.9, so not broken by the truth's rule.
    assert run.truth_broken == [False, True, False, False]
    # The detector's signals see the parent's encoder turning from f1 and its exclusion from the combo latent.
    signals = run.detection_signals
    assert signals["exclusive_overlap"][0] == pytest.approx(0.7071, abs=0.01)
    assert signals["encoder_decoder_gap"][0] > 0.2 and signals["encoder_decoder_gap"][
        2
    ] == pytest.approx(0, abs=1e-4)
    assert len(run.broken_score) == 4 and all(0 <= p <= 1 for p in run.broken_score)
    assert min(run.broken_score[:2]) > max(run.broken_score[2:])
