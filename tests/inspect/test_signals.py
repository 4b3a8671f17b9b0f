"""The detection signals on SAEs built by hand with a known defect: each signal rises on the latents
the defect breaks and stays near 0 on the clean ones; the truth (analysis/truth.py) agrees."""

import numpy as np
import pytest

from broken_latents.analysis.truth import truth_broken
from broken_latents.analysis.signals import peak_summary, signals_of
from broken_latents.analysis.peaks import fit_peak_model

D = 8


def _world(children: int, n: int = 20_000, seed: int = 0):
    """Parent 0 (0.25), `children` children (0.08 each) that force it and exclude each other, then two
    independent features (0.2); magnitudes N(1, 0.05). Returns f [n, F] and directions [F, D]."""
    rng = np.random.default_rng(seed)
    F = 1 + children + 2
    directions = np.eye(D)[:F]
    on = np.zeros((n, F), dtype=bool)
    on[:, 0] = rng.random(n) < 0.25
    which = rng.integers(0, children, n)  # one child at most: mutually exclusive
    child_on = rng.random(n) < 0.08 * children
    on[np.arange(n), 1 + which] = child_on
    on[:, 0] |= child_on
    on[:, -2:] = rng.random((n, 2)) < 0.2
    f = on * np.clip(rng.normal(1.0, 0.05, (n, F)), 0, None)
    return f, directions


def _absorbed_untied(directions, children: int):
    """Parent latent: decoder d0 (clean), encoder d0 - sum of the children, so it falls silent when any
    child fires; child latents: encoder d_c, decoder d0 + d_c (they absorb the parent); two clean latents."""
    W_dec = (
        [directions[0]]
        + [directions[0] + directions[c] for c in range(1, children + 1)]
        + list(directions[-2:])
    )
    W_enc = (
        [directions[0] - directions[1 : children + 1].sum(0)]
        + [directions[c] for c in range(1, children + 1)]
        + list(directions[-2:])
    )
    return np.array(W_enc).T, np.array(W_dec)


@pytest.mark.parametrize(
    "children", [1, 3]
)  # 1: absorption (recap); 3: mutually exclusive children
def test_absorbed_parent_and_children_show_in_encoder_and_coactivation(children):
    f, directions = _world(children)
    W_enc, W_dec = _absorbed_untied(directions, children)
    x = f @ directions
    h = np.maximum(x @ W_enc, 0)
    signals, models = signals_of(W_enc, W_dec, h)
    broken = list(range(children + 1))
    clean = [children + 1, children + 2]
    # The parent latent has one clean peak: the peaks cannot see it ...
    assert signals["peak_separated_weight"][0] == 0 and models[0].n_peaks == 1
    # ... but its encoder turns away from the direction it shares with the child latents, and it never
    # fires with them although their decoders overlap (cos 1/sqrt(2)).
    assert signals["encoder_decoder_gap"][broken].min() > 0.15
    assert signals["exclusive_overlap"][broken].min() == pytest.approx(1 / np.sqrt(2), abs=0.02)
    assert signals["encoder_turn"][0] > 0.5
    for name in (
        "encoder_decoder_gap",
        "encoder_turn",
        "exclusive_overlap",
        "decoder_overlap",
        "peak_separated_weight",
    ):
        assert signals[name][clean].max() < 0.05, name
    truth, best_cos, f1 = truth_broken(h, W_dec, directions, f, np.ones(len(W_dec), bool))
    assert truth.tolist() == [True] * (children + 1) + [False, False]
    assert (
        best_cos[0] == pytest.approx(1.0) and f1[0] < 0.9
    )  # clean decoder, silent when a child fires


def test_tied_merged_latent_has_separated_peaks_and_a_leak_does_not():
    f, directions = _world(1)
    x = f @ directions
    merged = (
        directions[1] + 0.4 * directions[0]
    )  # child merged with its parent: fires at 0.37 and 1.3
    leaky = (
        directions[3] + 0.08 * directions[2]
    )  # a clean latent with a small leak (+8% when f2 fires too)
    W = np.stack([merged / np.linalg.norm(merged), leaky / np.linalg.norm(leaky), directions[2]])
    h = np.maximum(x @ W.T, 0)
    signals, _ = signals_of(W.T, W, h)
    # The main (heaviest) peak is the parent alone (0.25 x 0.92 of inputs), the child's peak holds the rest.
    assert signals["peak_separated_weight"][0] == pytest.approx(
        0.08 / (0.08 + 0.25 * 0.92), abs=0.03
    )
    assert signals["peak_separated_weight"][1] == 0 and signals["peak_separated_weight"][2] == 0
    assert signals["encoder_decoder_gap"].max() == 0  # tied: encoder is the decoder


def test_a_shoulder_near_the_main_peak_is_not_separate_but_a_quarter_peak_is():
    """The issue's clean tied latent: firings at 18.0 with a leak bump at 19.5 (+8%): one peak's worth;
    a peak at a quarter of the main one is a second feature."""
    rng = np.random.default_rng(1)
    main = rng.normal(18.0, 0.3, 4000)
    for second, share in ((19.5, 0.0), (4.5, 0.2)):
        acts = np.concatenate([main, rng.normal(second, 0.3, 1000)])
        model = fit_peak_model(acts, floor_ratio=0.1)
        assert peak_summary(model, acts).separated_weight == pytest.approx(share, abs=0.03)
        assert model.n_peaks == (1 if share == 0 else 2)  # the shoulder joins the main peak


def test_a_latent_reading_minus_its_feature_is_active_where_the_feature_is_absent():
    """The one-latent local minimum: decoder -f0, active on every input without the parent (75%), while a
    clean latent is active as often as its feature fires (20%)."""
    f, directions = _world(1)
    x = f @ directions
    centred = x - x.mean(0)
    W = np.stack([-directions[0], directions[2]])
    h = np.maximum(centred @ W.T, 0)
    signals, _ = signals_of(W.T, W, h)
    absent = 1 - (f[:, 0] > 0).mean()
    assert signals["active_rate"][0] == pytest.approx(absent, abs=0.02)
    assert signals["active_rate"][1] == pytest.approx((f[:, 2] > 0).mean(), abs=0.02)


def test_coactivation_counts_equal_the_masks_counts():
    """The compiled row-by-row counts over two chunks equal the counts read off boolean masks,
    including pairs of always-on latents and pairs that never co-fire."""
    import broken_latents.analysis.signals as signals

    rng = np.random.default_rng(3)
    K = 64
    h_BK = np.where(rng.random((500, K)) < 0.05, rng.random((500, K)), 0).astype(np.float32)
    h_BK[:, :2] = 1.0  # two latents active on every row
    pairs = signals.neighbour_pairs(rng.standard_normal((K, D)))
    c = signals.CoActivation(pairs, np.full(K, 0.2, np.float32), np.tile([0.05, 0.3], (K, 1)))
    c.add(h_BK[:250])
    c.add(h_BK[250:])
    on = h_BK >= 0.2
    weak = (h_BK >= 0.05) & (h_BK < 0.3)
    a, b = pairs[:, 0], pairs[:, 1]
    assert c.rows == 500 and c.pair_counts_P.max() == 500  # the always-on pair
    assert np.array_equal(c.active_counts_K, on.sum(0))
    assert np.array_equal(c.weak_counts_K, weak.sum(0))
    assert np.array_equal(c.pair_counts_P, (on[:, a] & on[:, b]).sum(0))
    assert np.array_equal(c.weak_pair_counts_P2[:, 0], (weak[:, a] & on[:, b]).sum(0))
    assert np.array_equal(c.weak_pair_counts_P2[:, 1], (weak[:, b] & on[:, a]).sum(0))
    assert c.weak_pair_counts_P2.sum() > 0 and (c.pair_counts_P == 0).any()


def _parent_child_other():
    """20,000 inputs in 8 dims: a parent (rate 0.3) with a child firing on 40% of its inputs, and an
    independent feature (rate 0.2). Returns (rng, n, their unit directions, their firing masks)."""
    rng = np.random.default_rng(0)
    n = 20_000
    p_on = rng.random(n) < 0.3
    c_on = p_on & (rng.random(n) < 0.4)
    o_on = rng.random(n) < 0.2
    return rng, n, np.eye(D)[:3], (p_on, c_on, o_on)


def test_partial_absorption_points_at_the_child_not_the_parent():
    """Untied partial absorption: the child latent decodes child + parent and fires on every child
    input; the parent latent (a clean decoder) fires at full strength on the parent alone and at a
    quarter when the child fires. weak_with_partner is high for the parent (its weak firings, 40% of
    its firings, come with the child latent), partner_fires_weak for the child (when it fires, the
    parent fires weakly)."""
    from broken_latents.analysis.signals import signals_of

    rng, n, (parent, child, other), (p_on, c_on, o_on) = _parent_child_other()
    h_BK = np.stack(
        [
            np.where(p_on, np.where(c_on, 0.25, 1.0), 0.0) * rng.normal(1, 0.03, n),
            np.where(c_on, 1.0, 0.0) * rng.normal(1, 0.03, n),
            np.where(o_on, 1.0, 0.0) * rng.normal(1, 0.03, n),
        ],
        axis=1,
    ).clip(0, None)
    W_dec = np.stack([parent, child + 0.75 * parent, other])
    W_enc = np.stack([parent - 0.75 * child, child, other]).T
    s, _ = signals_of(W_enc, W_dec, h_BK, tied=False)
    cos = 0.75 / np.sqrt(1 + 0.75**2)
    assert s["weak_firing_share"][0] == pytest.approx(0.4, abs=0.03)
    assert s["weak_with_partner"][0] == pytest.approx(
        cos * s["weak_firing_share"][0], abs=0.01
    )  # every weak firing has the child active
    assert s["partner_fires_weak"][1] == pytest.approx(
        cos, abs=0.02
    )  # the parent weak whenever the child fires
    assert s["weak_with_partner"][1] == 0 and s["partner_fires_weak"][0] == 0
    assert s["weak_with_partner"][2] == 0 and s["partner_fires_weak"][2] == 0


def test_a_few_noise_level_firings_beside_the_child_do_not_explain_an_absorbed_parent():
    """Full absorption: the parent latent is silent when its child fires but for rare noise-level
    firings (3% of the child's inputs, at a twentieth of its strength). Each of those few weak firings
    has the child active, yet they are 1% of the parent's firings: weak_with_partner stays near 0, far
    below the partial absorption above (0.6 x 0.4)."""
    from broken_latents.analysis.signals import signals_of

    rng, n, (parent, child, other), (p_on, c_on, o_on) = _parent_child_other()
    noise = c_on & (rng.random(n) < 0.03)
    h_BK = np.stack(
        [
            np.where(p_on & ~c_on, 1.0, np.where(noise, 0.15, 0.0)) * rng.normal(1, 0.03, n),
            np.where(c_on, 1.0, 0.0) * rng.normal(1, 0.03, n),
            np.where(o_on, 1.0, 0.0) * rng.normal(1, 0.03, n),
        ],
        axis=1,
    ).clip(0, None)
    W_dec = np.stack([parent, (child + parent) / np.sqrt(2), other])
    W_enc = np.stack([parent - child, child, other]).T
    s, _ = signals_of(W_enc, W_dec, h_BK, tied=False)
    assert s["weak_firing_share"][0] < 0.03
    assert s["weak_with_partner"][0] < 0.03


def test_large_sae_peak_models_match_one_by_one():
    """peak_models on a wide SAE (the single-bump check in the parent, fits in workers) gives each
    latent the model peak_model gives it alone: one bump -> one Gaussian, two -> the mixture's two peaks."""
    from broken_latents.analysis.signals import (
        LARGE_SAE,
        LARGE_SAE_SAMPLES,
        peak_model,
        peak_models,
    )

    rng = np.random.default_rng(4)
    one = [rng.normal(1.0, 0.05, 400) for _ in range(LARGE_SAE - 1)]
    two = [
        np.concatenate([rng.normal(0.3, 0.02, 200), rng.normal(1.0, 0.03, 400)]) for _ in range(2)
    ]
    samples = one + two + [np.zeros(0)]
    models = peak_models(samples)
    assert [m.n_peaks for m in models[-3:]] == [2, 2, 0] and models[0].n_peaks == 1
    for j in (0, len(one), len(one) + 1, len(samples) - 1):
        assert (
            models[j].to_json() == peak_model(samples[j], max_samples=LARGE_SAE_SAMPLES).to_json()
        )


def test_cofire_overlap_sees_a_child_decoding_part_of_its_firing_parent():
    """A tied-style child latent that decodes child + half the parent fires only with the parent's latent
    (the child forces the parent): cofire_overlap = cos(W_child, W_parent) x P(parent active | child
    active) = 0.447; the same world with a clean child decoder gives 0, and a latent of an independent
    feature whose decoder leans 0.2 on the parent only gets 0.2 x the parent's rate."""
    rng, n, (parent, child, other), (p_on, c_on, o_on) = _parent_child_other()
    h_BK = np.stack([p_on, c_on, o_on], axis=1) * rng.normal(1, 0.03, (n, 3)).clip(0, None)
    leaning = 0.2 * parent + np.sqrt(1 - 0.2**2) * other
    absorbed = np.stack([parent, child + 0.5 * parent, leaning])
    clean = np.stack([parent, child, leaning])
    s_absorbed = signals_of(absorbed.T, absorbed, h_BK, tied=True)[0]["cofire_overlap"]
    s_clean = signals_of(clean.T, clean, h_BK, tied=True)[0]["cofire_overlap"]
    assert s_absorbed[1] == pytest.approx(0.5 / np.sqrt(1.25), abs=0.01)
    assert s_clean[1] == pytest.approx(0.0, abs=1e-9)
    assert s_clean[2] == pytest.approx(0.2 * p_on[o_on].mean(), abs=0.01) and s_clean[2] < 0.1
