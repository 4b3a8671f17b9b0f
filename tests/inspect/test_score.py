"""The score: a logistic regression or boosted trees whose weights are data; the shipped weights name
every signal and say how they were fitted, with the fit and held-out world seeds apart."""

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from broken_latents.analysis.score import (
    RISING,
    MeanScoreModel,
    ScoreModel,
    TreeScoreModel,
    fit_score_model,
    fit_tree_score_model,
    load_score_model,
)
from broken_latents.analysis.signals import SIGNALS


def test_fit_ranks_by_the_informative_signal_and_round_trips():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    X = np.stack(
        [y + rng.normal(0, 0.3, 400), rng.normal(0, 1, 400)], axis=1
    )  # only the first informs
    model = fit_score_model(X, y, ("a", "b"), {"how": "test"})
    p = model.probability({"a": X[:, 0], "b": X[:, 1]})
    assert ((p >= 0.5) == y).mean() > 0.9
    assert abs(model.coef[0]) > 5 * abs(model.coef[1])
    again = ScoreModel.from_json(model.to_json())
    assert np.array_equal(again.probability({"a": X[:, 0], "b": X[:, 1]}), p)


def test_degree_two_learns_an_interaction_a_linear_score_cannot():
    """Broken when a is high unless b explains it (the partner signals' role): XOR-like, so the linear
    score is near chance and the pairwise products separate it; the round trip keeps the degree."""
    rng = np.random.default_rng(1)
    a, b = rng.random(2000) < 0.5, rng.random(2000) < 0.5
    y = a ^ b
    X = np.stack([a + rng.normal(0, 0.1, 2000), b + rng.normal(0, 0.1, 2000)], axis=1)
    signals = {"a": X[:, 0], "b": X[:, 1]}
    linear = fit_score_model(X, y, ("a", "b"), {})
    pairs = fit_score_model(X, y, ("a", "b"), {}, degree=2)
    assert ((linear.probability(signals) >= 0.5) == y).mean() < 0.7
    assert ((pairs.probability(signals) >= 0.5) == y).mean() > 0.95
    again = ScoreModel.from_json(pairs.to_json())
    assert again.degree == 2 and np.array_equal(
        again.probability(signals), pairs.probability(signals)
    )


def _xor_world(n=2000, seed=1):
    rng = np.random.default_rng(seed)
    a, b = rng.random(n) < 0.5, rng.random(n) < 0.5
    X = np.stack([a + rng.normal(0, 0.1, n), b + rng.normal(0, 0.1, n)], axis=1)
    return X, a ^ b


def test_trees_exported_score_like_the_fitted_estimator_and_round_trip(tmp_path):
    """The exported node arrays give scikit-learn's own probabilities, and survive the weights file."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = _xor_world()
    signals = ("peak_spread", "decoder_overlap")  # one held monotone (RISING), one free
    model = fit_tree_score_model(X, y, signals, {"how": "test"})
    reference = HistGradientBoostingClassifier(
        monotonic_cst=[1, 0], class_weight="balanced", early_stopping=False, random_state=0
    ).fit(X, y.astype(int))
    p = model.probability(dict(zip(signals, X.T)))
    assert np.allclose(p, reference.predict_proba(X)[:, 1], atol=1e-12)
    path = tmp_path / "weights.json"
    path.write_text(json.dumps(model.to_json()))
    again = load_score_model(path)
    assert isinstance(again, TreeScoreModel)
    assert np.array_equal(again.probability(dict(zip(signals, X.T))), p)


def test_trees_learn_the_interaction_and_keep_rising_signals_monotone():
    """Free in both signals the trees learn XOR; with the first held rising they cannot score a higher
    value of it lower, whatever the second."""
    X, y = _xor_world()
    free = fit_tree_score_model(X, y, ("x", "y"), {})
    assert ((free.probability({"x": X[:, 0], "y": X[:, 1]}) >= 0.5) == y).mean() > 0.95
    rising = fit_tree_score_model(X, y, ("peak_spread", "y"), {})
    grid = np.linspace(-0.5, 1.5, 41)
    for other in (0.0, 1.0):
        p = rising.probability({"peak_spread": grid, "y": np.full_like(grid, other)})
        assert np.all(np.diff(p) >= -1e-12)


def _trees_of(model):
    return [m for m in getattr(model, "members", (model,)) if isinstance(m, TreeScoreModel)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1), min_size=13, max_size=13),
    st.sampled_from(sorted(RISING)),
    st.floats(0, 1),
)
def test_shipped_trees_never_fall_as_a_rising_signal_grows(values, signal, more):
    """More of a defect never makes a latent look cleaner to the shipped score's trees (monotone by
    construction; the products beside them have no such guarantee)."""
    (trees,) = _trees_of(load_score_model())
    base = dict(zip(trees.signals, np.array(values[: len(trees.signals)])[:, None]))
    raised = {**base, signal: base[signal] + more}
    assert trees.probability(raised)[0] >= trees.probability(base)[0] - 1e-12


def test_mean_of_two_models_is_the_mean_of_their_probabilities_and_round_trips(tmp_path):
    X, y = _xor_world()
    signals = dict(zip(("x", "y"), X.T))
    trees = fit_tree_score_model(X, y, ("x", "y"), {})
    pairs = fit_score_model(X, y, ("x", "y"), {}, degree=2)
    mean = MeanScoreModel((trees, pairs), 0.6, {"how": "test"})
    expected = (trees.probability(signals) + pairs.probability(signals)) / 2
    assert np.allclose(mean.probability(signals), expected) and mean.signals == ("x", "y")
    path = tmp_path / "weights.json"
    path.write_text(json.dumps(mean.to_json()))
    again = load_score_model(path)
    assert isinstance(again, MeanScoreModel) and again.threshold == 0.6
    assert np.array_equal(again.probability(signals), mean.probability(signals))


def test_shipped_weights_cover_the_signals_and_state_the_split():
    model = load_score_model()
    assert set(model.signals) <= set(SIGNALS)
    for trees in _trees_of(model):
        used = np.concatenate([t["feature"] for t in trees.trees])
        assert used.max() < len(trees.signals) and len(trees.trees) > 0
    for member in getattr(model, "members", (model,)):
        if isinstance(member, TreeScoreModel):
            continue
        features = (
            len(member.signals) * (len(member.signals) + 3) // 2
            if member.degree == 2
            else len(member.signals)
        )
        assert features == len(member.coef)
    assert 0 < model.threshold < 1
    fitted = model.fitted
    assert set(fitted["fit_world_seeds"]).isdisjoint(fitted["held_out_world_seeds"])
    assert fitted["benchmark"] == "studies/detection_benchmark.py"
