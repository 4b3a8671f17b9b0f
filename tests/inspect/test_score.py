"""The score: a logistic regression whose weights are data; the shipped weights name every signal and
say how they were fitted, with the fit and held-out world seeds apart."""

import numpy as np

from broken_latents.analysis.score import ScoreModel, fit_score_model, load_score_model
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


def test_shipped_weights_cover_the_signals_and_state_the_split():
    model = load_score_model()
    features = (
        len(model.signals) * (len(model.signals) + 3) // 2
        if model.degree == 2
        else len(model.signals)
    )
    assert set(model.signals) <= set(SIGNALS) and features == len(model.coef)
    assert 0 < model.threshold < 1
    fitted = model.fitted
    assert set(fitted["fit_world_seeds"]).isdisjoint(fitted["held_out_world_seeds"])
    assert fitted["benchmark"] == "studies/detection_benchmark.py"
