"""Known answers for the peak model: synthetic activations with known peaks."""

import numpy as np
import pytest

from broken_latents.analysis import peaks as peak_model
from broken_latents.analysis.peaks import fit_peak_model


def _sample(peaks: list[tuple[float, float, int]], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(mean, std, n) for mean, std, n in peaks])


def test_one_gaussian_is_one_peak():
    model = fit_peak_model(_sample([(5.0, 0.3, 4000)]))
    assert model.n_peaks == 1
    assert model.main.mean == pytest.approx(5.0, abs=0.05)
    assert model.main.std == pytest.approx(0.3, rel=0.1)
    assert model.threshold == pytest.approx(5.0 - 3 * 0.3, abs=0.15)  # one peak: mean - 3 std
    assert model.off_main_weight == 0.0


def test_two_separated_gaussians_are_two_peaks_with_their_means():
    model = fit_peak_model(_sample([(2.0, 0.2, 1500), (6.0, 0.3, 3500)]))
    assert model.n_peaks == 2
    assert [p.mean for p in model.peaks] == pytest.approx([2.0, 6.0], abs=0.05)
    assert [p.weight for p in model.peaks] == pytest.approx([0.3, 0.7], abs=0.02)
    assert model.main.mean == pytest.approx(6.0, abs=0.05)  # the highest peak is the main one
    assert 2.0 + 3 * 0.2 < model.threshold < 6.0 - 3 * 0.3
    assert model.off_main_weight == pytest.approx(0.3, abs=0.02)


def test_four_peaks_like_the_posts_broken_latent():
    # Parent alone (weak, common), parent with the other child's negative part, the child
    # with its parent (strong), and that with the other child too: four clusters.
    acts = _sample([(1.5, 0.08, 2000), (2.2, 0.08, 800), (4.6, 0.1, 1500), (5.4, 0.1, 700)])
    model = fit_peak_model(acts)
    assert model.n_peaks == 4
    assert [p.mean for p in model.peaks] == pytest.approx([1.5, 2.2, 4.6, 5.4], abs=0.05)
    assert 4.6 < model.threshold < 5.4  # between the main peak and the one below it


def test_threshold_is_where_the_two_top_peaks_weigh_equally():
    # Equal weights and stds: the densities cross exactly half way.
    model = fit_peak_model(_sample([(2.0, 0.25, 2500), (4.0, 0.25, 2500)]))
    assert model.threshold == pytest.approx(3.0, abs=0.05)
    # A lower peak 4x heavier moves the crossing towards the main one by
    # std^2 ln(4) / (distance) = 0.16 x 1.386 / 2 = 0.11 from the midpoint.
    heavier = fit_peak_model(_sample([(2.0, 0.4, 4000), (4.0, 0.4, 1000)]))
    midpoint = (heavier.peaks[0].mean + heavier.peaks[1].mean) / 2
    assert heavier.threshold - midpoint == pytest.approx(0.11, abs=0.04)


def test_close_or_light_components_do_not_count_as_peaks():
    skewed = np.random.default_rng(0).gamma(
        20, 0.25, 5000
    )  # one skewed peak: BIC may take 2 components
    assert fit_peak_model(skewed).n_peaks == 1
    # A 1% cluster is a tail, not a feature.
    assert fit_peak_model(_sample([(5.0, 0.2, 4950), (2.0, 0.1, 50)])).n_peaks == 1


def test_weak_bulk_below_the_floor_is_left_out():
    rng = np.random.default_rng(0)
    acts = np.concatenate([np.abs(rng.normal(0, 0.3, 20000)), rng.normal(5.0, 0.2, 3000)])
    model = fit_peak_model(acts)
    assert model.n_peaks == 1 and model.main.mean == pytest.approx(5.0, abs=0.05)
    assert model.floor == pytest.approx(peak_model.PEAK_FLOOR * acts.max())
    assert (
        fit_peak_model(acts, floor_ratio=0.0).n_peaks >= 2
    )  # the bulk takes components and counts as peaks


def test_silent_sparse_and_constant_latents():
    assert fit_peak_model(np.zeros(100)).n_peaks == 0
    assert fit_peak_model(np.zeros(100)).threshold is None
    assert fit_peak_model(np.array([0.0, 1.0, 2.0])).threshold is None  # too few to fit
    constant = fit_peak_model(np.full(500, 3.0))
    assert constant.n_peaks == 1 and constant.main.mean == pytest.approx(3.0)


def test_deterministic_and_json_shape():
    acts = _sample([(2.0, 0.2, 3000), (6.0, 0.3, 3000)], seed=3)
    a, b = fit_peak_model(acts, max_samples=2000), fit_peak_model(acts, max_samples=2000)
    assert a == b
    out = a.to_json()
    assert set(out) >= {"mixture", "peaks", "threshold"}
    assert set(out["mixture"][0]) == {"mean", "std", "weight"}
    assert sum(c["weight"] for c in out["mixture"]) == pytest.approx(1.0, abs=1e-4)
    assert [c["mean"] for c in out["mixture"]] == sorted(c["mean"] for c in out["mixture"])


def test_floor_is_the_one_the_histogram_count_uses():
    """count_peaks ignores what lies under PEAK_FLOOR x max: a bump just below it is no peak, the same
    bump just above it is one."""
    from broken_latents.analysis.peaks import count_peaks

    rng = np.random.default_rng(0)
    top = rng.normal(10.0, 0.2, 4000)
    for ratio, expected in ((peak_model.PEAK_FLOOR - 0.05, 1), (peak_model.PEAK_FLOOR + 0.05, 2)):
        bump = rng.normal(ratio * 10.0, 0.1, 4000)
        assert count_peaks(np.concatenate([top, bump]))[0] == expected


def test_a_leak_shoulder_near_the_heaviest_peak_joins_it():
    """Issue 18's clean tied latent: firings at 18.0, a bump at 19.5 (+8%) when an unlearned feature leaks
    in: one peak. A peak at a quarter of the main one stays a second peak."""
    model = fit_peak_model(_sample([(18.0, 0.2, 4000), (19.5, 0.2, 600)]))
    assert model.n_peaks == 1 and model.main.mean == pytest.approx(18.2, abs=0.1)
    assert (
        fit_peak_model(_sample([(18.0, 0.3, 4000), (4.5, 0.3, 1000)]), floor_ratio=0.1).n_peaks == 2
    )


def test_peak_model_record_round_trips_byte_identical():
    """metrics.json's peak_models entry, typed (PeakModelRecord), writes exactly the dict the untyped
    code wrote ({"latent": j, **PeakModel.to_json()}), a null threshold included, and reads back equal."""
    import json

    from broken_latents.analysis.metrics import PeakModelRecord

    two = fit_peak_model(_sample([(2.0, 0.2, 3000), (6.0, 0.3, 3000)], seed=3), max_samples=2000)
    one = fit_peak_model(_sample([(3.0, 0.2, 3000)], seed=4), max_samples=2000)
    for latent, model in ((5, two), (0, one), (1, peak_model.EMPTY)):
        old = {"latent": latent, **model.to_json()}
        record = PeakModelRecord.from_json(old)
        assert json.dumps(record.to_json()) == json.dumps(old)
        assert PeakModelRecord.from_json(record.to_json()) == record
    assert (
        PeakModelRecord.from_json({"latent": 1, **peak_model.EMPTY.to_json()}).to_json()[
            "threshold"
        ]
        is None
    )
    assert [c.mean for c in PeakModelRecord.from_json({"latent": 5, **two.to_json()}).mixture] == [
        c["mean"] for c in two.to_json()["mixture"]
    ]
