"""Absorption and hedging known answers on hand-built SAEs (no training), plus invariants.

Batches are exact enumerations of firing patterns: each pattern repeated in proportion to its
probability, so a batch mean is the expectation, with no sampling error."""

import itertools
import json
import math
from fractions import Fraction
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linear_sum_assignment

from broken_latents.analysis.absorption import AbsorptionMetrics, absorption_metrics, cooccurring
from broken_latents.config.schema import HierarchyConfig

SQRT2 = math.sqrt(2.0)


def basis(n: int, dim: int = 50, seed: int = 0) -> np.ndarray:
    """n orthonormal directions in `dim` dimensions, rows (not the identity, to catch index slips)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, n)))
    return q.T


def relu_encode(x_BD, W_enc_DK, b_enc_K=0.0, b_dec_D=0.0):
    return np.maximum((x_BD - b_dec_D) @ W_enc_DK + b_enc_K, 0.0)


def enumerate_world(
    rates: list[Fraction], forces: dict[int, int]
) -> tuple[np.ndarray, list[Fraction]]:
    """Every own-firing pattern with its probability, with child -> parent forcing applied.
    Returns fires_PN and the probability of each row."""
    patterns, weights = [], []
    for own in product([False, True], repeat=len(rates)):
        p = Fraction(1)
        for fires, rate in zip(own, rates):
            p *= rate if fires else 1 - rate
        fires = list(own)
        for child, parent in forces.items():
            fires[parent] |= fires[child]
        patterns.append(fires)
        weights.append(p)
    return np.array(patterns), weights


def exact_batch(rates, forces, magnitudes) -> np.ndarray:
    """f_BN: each pattern repeated weight x (common denominator) times."""
    fires_PN, weights = enumerate_world(rates, forces)
    scale = math.lcm(*(w.denominator for w in weights))
    reps = [int(w * scale) for w in weights]
    return np.repeat(fires_PN, reps, axis=0) * np.asarray(magnitudes, dtype=float)


def hungarian(W_dec_KD, F_ND) -> dict[int, int]:
    """feature -> latent, as analysis.match_latents matches (decoder cosine, all latents live)."""
    cos = (W_dec_KD / np.linalg.norm(W_dec_KD, axis=1, keepdims=True)) @ F_ND.T
    rows, cols = linear_sum_assignment(-cos)
    return {int(c): int(r) for r, c in zip(rows, cols)}


# -- the recap world: 4 orthogonal features, child 1 forces parent 0 ---------------------------

RECAP_RATES = [Fraction(1, 2), Fraction(1, 4), Fraction(1, 2), Fraction(3, 4)]
RECAP_FORCES = {1: 0}
P_CHILD_GIVEN_PARENT = RECAP_RATES[1] / (1 - (1 - RECAP_RATES[0]) * (1 - RECAP_RATES[1]))  # = 2/5


def untied_absorbed(F, combo_unit_decoder: bool):
    """The post's absorbed untied SAE: latent 0 encodes f0 - f1 and decodes f0; latents 1, 2
    are f3, f2; latent 3 encodes the child f1 and decodes the combination f0 + f1."""
    if combo_unit_decoder:  # decoder (f0+f1)/sqrt2, encoder scaled so h = sqrt2 writes f0 + f1
        combo_enc, combo_dec = SQRT2 * F[1], (F[0] + F[1]) / SQRT2
    else:
        combo_enc, combo_dec = F[1], F[0] + F[1]
    W_enc_DK = np.stack([F[0] - F[1], F[3], F[2], combo_enc], axis=1)
    W_dec_KD = np.stack([F[0], F[3], F[2], combo_dec])
    return W_enc_DK, W_dec_KD


@pytest.mark.parametrize("combo_unit_decoder", [True, False])
def test_untied_absorbed_solution_has_exact_absorption(combo_unit_decoder):
    F = basis(4)
    f = exact_batch(RECAP_RATES, RECAP_FORCES, [1.0] * 4)
    W_enc, W_dec = untied_absorbed(F, combo_unit_decoder)
    h = relu_encode(f @ F, W_enc)
    assert np.allclose(h @ W_dec, f @ F)  # it is a perfect reconstruction
    matched = hungarian(W_dec, F)
    assert matched == {0: 0, 3: 1, 2: 2, 1: 3}
    cooccur = cooccurring([HierarchyConfig(parent=0, children=[1])], 4)
    m = absorption_metrics(h, W_dec, F, f, matched, [0, 1, 2, 3], cooccur)

    assert m.absorption == pytest.approx([float(P_CHILD_GIVEN_PARENT), 0, 0, 0], abs=1e-12)
    assert m.full_absorption == pytest.approx([float(P_CHILD_GIVEN_PARENT), 0, 0, 0], abs=1e-12)
    # the combo latent (matched to the child) carries the parent along: cos(f0 + f1, f0)
    assert m.hedging == pytest.approx([0, 0, 0, 1 / SQRT2], abs=1e-12)
    fires_N = (f != 0).sum(axis=0)
    assert m.firing == fires_N.tolist() and m.unreconstructed == [0, 0, 0, 0]

    child = f[:, 1] != 0
    on_child = absorption_metrics(h[child], W_dec, F, f[child], matched, [0, 1, 2, 3], cooccur)
    assert on_child.absorption[0] == pytest.approx(1.0, abs=1e-12)
    assert on_child.full_absorption[0] == pytest.approx(1.0, abs=1e-12)
    parent_alone = (f[:, 0] != 0) & ~child
    alone = absorption_metrics(
        h[parent_alone], W_dec, F, f[parent_alone], matched, [0, 1, 2, 3], cooccur
    )
    assert alone.absorption[0] == 0 and alone.full_absorption[0] == 0


def test_clean_tied_sae_scores_zero_everywhere():
    F = basis(4, seed=1)
    f = exact_batch(RECAP_RATES, RECAP_FORCES, [2.0, 1.5, 1.0, 0.5])
    W_dec = F.copy()  # tied: W_enc = W_dec^T, b_enc = 0
    h = relu_encode(f @ F, W_dec.T)
    matched = hungarian(W_dec, F)
    cooccur = cooccurring([HierarchyConfig(parent=0, children=[1])], 4)
    m = absorption_metrics(h, W_dec, F, f, matched, [0, 1, 2, 3], cooccur)
    assert m.absorption == [0.0] * 4
    assert m.full_absorption == [0.0] * 4
    assert m.hedging == pytest.approx([0.0] * 4, abs=1e-12)
    assert m.unreconstructed == [0] * 4


def test_single_latent_merging_parent_and_children():
    """The post's narrow SAE: one tied latent (f0 + f1 + f2)/sqrt3 for a parent 0 with children
    1, 2; feature 3 is left out. The children are carried only by the parent's latent."""
    F = basis(4, seed=2)
    rates = [Fraction(1, 4), Fraction(1, 2), Fraction(1, 2), Fraction(1, 2)]
    f = exact_batch(rates, {1: 0, 2: 0}, [1.0] * 4)
    W_dec = ((F[0] + F[1] + F[2]) / math.sqrt(3))[None]
    h = relu_encode(f @ F, W_dec.T)
    cooccur = cooccurring([{"parent": 0, "children": [1, 2]}], 4)
    m = absorption_metrics(h, W_dec, F, f, {0: 0}, [0], cooccur)
    assert m.absorption == pytest.approx([0.0, 1.0, 1.0, 0.0], abs=1e-12)
    # when child 1 fires the latent writes (2 or 3)/3 of f1 >= 1/2: full absorption
    assert m.full_absorption == pytest.approx([0.0, 1.0, 1.0, 0.0], abs=1e-12)
    assert m.hedging == pytest.approx([2 / math.sqrt(3)], abs=1e-12)
    # feature 3 is lost, not absorbed: nothing carries it on any input where it fires
    assert m.unreconstructed[3] == m.firing[3] > 0
    assert m.unreconstructed[:3] == [0, 0, 0]


# -- hedging -------------------------------------------------------------------------------------


def test_hedging_signs_read_apart():
    """20 features, 5 and 7 force 12. Latent for 5 carries +0.3 of its parent; the parent's
    latent carries -0.2 of each child. Unit decoders, so the cosines are exactly 0.3 and -0.2."""
    F = basis(20, seed=3)
    perm = np.random.default_rng(0).permutation(20)  # latent perm[i] is feature i's
    W_dec = np.empty((20, 50))
    W_dec[perm] = F
    W_dec[perm[5]] = math.sqrt(1 - 0.3**2) * F[5] + 0.3 * F[12]
    W_dec[perm[12]] = math.sqrt(1 - 2 * 0.2**2) * F[12] - 0.2 * F[5] - 0.2 * F[7]
    rates = [Fraction(1, 2)] * 3
    f3 = exact_batch(rates, {0: 2, 1: 2}, [1.0, 1.0, 1.0])  # features 5, 7, 12
    f = np.zeros((len(f3), 20))
    f[:, [5, 7, 12]] = f3
    h = relu_encode(f @ F, W_dec.T)
    matched = hungarian(W_dec, F)
    assert matched == {i: int(perm[i]) for i in range(20)}
    cooccur = cooccurring([HierarchyConfig(parent=12, children=[5, 7])], 20)
    m = absorption_metrics(h, W_dec, F, f, matched, range(20), cooccur)
    expected = np.zeros(20)
    expected[perm[5]], expected[perm[12]] = 0.3, -0.4
    assert m.hedging == pytest.approx(expected.tolist(), abs=1e-12)


def test_cooccurring_takes_ancestors_and_descendants_not_siblings():
    hierarchy = [
        HierarchyConfig(parent=12, children=[5, 7]),
        {"parent": 5, "children": [3], "mode": "conditional"},
    ]
    co = cooccurring(hierarchy, 14)
    assert set(co) == set(range(14))
    assert co[12] == [3, 5, 7]
    assert co[5] == [3, 12]
    assert co[3] == [5, 12]
    assert co[7] == [12]
    assert co[0] == []
    with pytest.raises(ValueError, match="outside"):
        cooccurring([{"parent": 0, "children": [14]}], 14)


# -- edge cases ----------------------------------------------------------------------------------


def test_unmatched_dead_and_silent_features_are_defined():
    """5 features, 4 latents: feature 2 unmatched and carried by nobody, feature 4 never fires,
    latent 3 dead though matched to the child 1 (its decoder leans on the parent 0: a live
    latent would hedge 1/sqrt2), latent 2 a zero decoder row."""
    F = basis(5, seed=4)
    f = exact_batch([Fraction(1, 2)] * 4 + [Fraction(0)], {1: 0}, [1.0] * 5)
    W_dec = np.stack([F[0], F[1], np.zeros(50), F[1] + F[0]])
    W_enc = np.stack([F[0], F[1], F[3], F[1]], axis=1)
    h = relu_encode(f @ F, W_enc)
    h[:, 3] = 0.0
    matched = {0: 0, 1: 3, 3: 2, 4: 1}
    cooccur = cooccurring([HierarchyConfig(parent=0, children=[1])], 5)
    m = absorption_metrics(h, W_dec, F, f, matched, [0, 1, 2], cooccur)
    assert m.firing[4] == 0 and m.absorption[4] == 0.0 and m.full_absorption[4] == 0.0
    assert m.absorption[2] == 0.0 and m.unreconstructed[2] == m.firing[2] > 0
    assert m.absorption[3] == 0.0 and m.unreconstructed[3] == m.firing[3]  # zero decoder row
    # the child's latent is dead; unmatched latent 1 carries all of it
    assert m.absorption[1] == 1.0 and m.full_absorption[1] == 1.0
    assert m.hedging == pytest.approx([0.0] * 4, abs=1e-12)  # 0-1 orthogonal; 4 has no partners
    assert m.hedging[2:] == [0.0, 0.0]  # zero row; dead latent
    text = json.dumps(m.to_dict())
    assert "NaN" not in text and "Infinity" not in text
    assert set(json.loads(text)) == {
        "absorption",
        "full_absorption",
        "hedging",
        "firing",
        "unreconstructed",
    }

    empty = absorption_metrics(
        np.zeros((0, 4)), W_dec, F, np.zeros((0, 5)), matched, [0, 1, 2], cooccur
    )
    assert (
        empty.absorption == [0.0] * 5
        and empty.full_absorption == [0.0] * 5
        and empty.firing == [0] * 5
    )


def test_negative_contributions_do_not_push_absorption_outside_0_1():
    """Feature 0's latent writes f0, a second latent writes f1 - f0 when the child fires, a third
    writes +f0 too: the negative part is ignored, so absorption = 1/2 there, not (1 - 1)/1 or 1/0."""
    F = basis(2, seed=5)
    f = np.array([[1.0, 1.0]])
    W_dec = np.stack([F[0], F[1] - F[0], F[0]])
    h = np.array([[1.0, 1.0, 1.0]])
    m = absorption_metrics(h, W_dec, F, f, {0: 0, 1: 1}, [0, 1, 2], {})
    assert m.absorption[0] == pytest.approx(0.5)
    # a matched latent with a negative projection leaves all of f0 to the others
    m = absorption_metrics(h, W_dec, F, f, {0: 1, 1: 0}, [0, 1, 2], {})
    assert m.absorption[0] == pytest.approx(1.0)
    # full absorption counts the others' net projection: 0 carries f0, 1 takes it away
    h = np.array([[1.0, 1.0, 0.0]])
    m = absorption_metrics(h, W_dec, F, f, {0: 2, 1: 1}, [0, 1, 2], {})
    assert m.absorption[0] == pytest.approx(1.0) and m.full_absorption[0] == 0.0


def test_per_input_fractions_are_averaged_and_partial_absorption_is_not_full():
    """Two inputs with f0 at 3 and at 1. On the first another latent carries all of f0, on the
    second the matched latent carries 0.4 and another 0.6 (not full: the matched one fires).
    Per-input mean: (1 + 0.6) / 2 = 0.8; a ratio of sums would give (3 + 0.6) / 4 = 0.9."""
    F = basis(1, dim=3, seed=6)
    W_dec = np.stack([F[0], F[0]])
    h = np.array([[0.0, 3.0], [0.4, 0.6]])
    m = absorption_metrics(h, W_dec, F, np.array([[3.0], [1.0]]), {0: 0}, [0, 1], {})
    assert m.absorption == pytest.approx([0.8], abs=1e-12)
    assert m.full_absorption == [0.5]


def test_input_pointing_away_from_the_feature_is_not_full_absorption():
    """Superposed features at cos -0.9: f = (1, 2) gives x . d0 = -0.8. Nothing carries f0 and
    its latent is silent, yet 0 >= -0.4 must not count as 'others carry half of it'."""
    F = np.array([[1.0, 0.0], [-0.9, math.sqrt(1 - 0.81)]])
    m = absorption_metrics(
        np.zeros((1, 2)), np.eye(2), F, np.array([[1.0, 2.0]]), {0: 0, 1: 1}, [0, 1], {}
    )
    assert (
        m.full_absorption == [0.0, 0.0]
        and m.absorption == [0.0, 0.0]
        and m.unreconstructed == [1, 1]
    )


def test_bad_arguments_are_refused():
    F = basis(2)
    with pytest.raises(ValueError, match="one-to-one"):
        absorption_metrics(np.zeros((1, 2)), F, F, np.zeros((1, 2)), {0: 0, 1: 0}, [0, 1], {})
    with pytest.raises(ValueError, match="shapes"):
        absorption_metrics(np.zeros((1, 3)), F, F, np.zeros((1, 2)), {}, [], {})
    with pytest.raises(ValueError, match="finite"):
        absorption_metrics(np.full((1, 2), np.nan), F, F, np.zeros((1, 2)), {}, [], {})


# -- invariants ----------------------------------------------------------------------------------


@st.composite
def random_sae(draw):
    N, K, B = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(0, 12))
    D = draw(st.integers(2, 7))
    floats = st.floats(-2, 2, allow_nan=False, allow_subnormal=False)
    F = draw(hnp.arrays(np.float64, (N, D), elements=floats))
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    F = np.where(
        norms > 1e-3, F / np.maximum(norms, 1e-3), np.eye(D)[np.arange(N) % D]
    )  # unit rows
    W = draw(hnp.arrays(np.float64, (K, D), elements=floats))
    h = draw(
        hnp.arrays(np.float64, (B, K), elements=st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 1e-9]))
    )
    f = draw(hnp.arrays(np.float64, (B, N), elements=st.sampled_from([0.0, 0.0, 1.0, 2.5, 20.0])))
    features = draw(st.permutations(range(N)))
    latents = draw(st.permutations(range(K)))
    n_matched = draw(st.integers(0, min(N, K)))
    matched = {features[t]: latents[t] for t in range(n_matched)}
    live = sorted(draw(st.sets(st.integers(0, K - 1))))
    parents = draw(st.lists(st.integers(0, N - 1), min_size=N, max_size=N))
    hierarchy = [{"parent": p, "children": [c]} for c, p in enumerate(parents) if p < c]
    return h, W, F, f, matched, live, cooccurring(hierarchy, N)


@settings(max_examples=150, deadline=None)
@given(random_sae())
def test_absorption_lies_in_0_1_and_everything_is_finite(sae):
    m = absorption_metrics(*sae)
    assert all(0.0 <= a <= 1.0 for a in m.absorption + m.full_absorption)
    assert all(math.isfinite(v) for v in m.hedging)
    _, _, _, _, matched, _, cooccur = sae
    for i, j in matched.items():  # a sum of cosines
        assert abs(m.hedging[j]) <= len(cooccur[i]) + 1e-9
    json.dumps(m.to_dict(), allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(random_sae(), st.data())
def test_permuting_latents_permutes_hedging(sae, data):
    h, W, F, f, matched, live, cooccur = sae
    K = W.shape[0]
    perm = np.array(data.draw(st.permutations(range(K))))  # new latent k is old latent perm[k]
    new_index = np.argsort(perm)
    before = absorption_metrics(*sae)
    after = absorption_metrics(
        h[:, perm],
        W[perm],
        F,
        f,
        {i: int(new_index[j]) for i, j in matched.items()},
        [int(new_index[j]) for j in live],
        cooccur,
    )
    assert after.hedging == pytest.approx([before.hedging[p] for p in perm], abs=1e-12)
    assert after.absorption == pytest.approx(before.absorption, abs=1e-9)
    assert after.full_absorption == before.full_absorption


def test_metrics_type():
    m = absorption_metrics(
        np.zeros((0, 1)), np.ones((1, 2)), basis(1, 2), np.zeros((0, 1)), {}, [], {}
    )
    assert isinstance(m, AbsorptionMetrics)


def test_full_absorption_at_its_threshold_does_not_depend_on_the_latent_order():
    """Four latents carry 0.35 + 0.7 + 0.35 + 0.35 = 1.75 of an input whose projection is 3.5: exactly
    the threshold (half), which the sum reaches or misses by rounding depending on the order of the
    latents (hypothesis found it); a tie counts in every order."""
    h = np.array([[0, 0, 0, 0], [0.5, 1, 0.5, 0.5]])
    W = np.full((4, 3), 0.7)
    F = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    f = np.array([[0, 0, 0, 0, 0], [1, 0, 0, 2.5, 0]], float)
    cooccur = {0: [1, 2, 3, 4], 1: [0], 2: [0], 3: [0], 4: [0]}
    for perm in itertools.permutations(range(4)):
        perm = list(perm)
        m = absorption_metrics(h[:, perm], W[perm], F, f, {}, [], cooccur)
        assert m.full_absorption == [1.0, 0.0, 0.0, 1.0, 0.0], perm
