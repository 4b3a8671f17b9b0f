"""One calibrated score per latent: the probability that it is broken, from its signals (signals.py).

Three kinds of model, one registry (SCORE_MODELS), chosen by the detection benchmark on its fit split:

The mean of two others (`MeanScoreModel`, kind "mean"), e.g. of the trees and the logistic regression below.

Boosted trees (`TreeScoreModel`, kind "trees"): p = 1 / (1 + exp(-(b + sum of the trees' leaf values))),
each tree a sequence of "signal <= threshold" questions, fitted by scikit-learn's
HistGradientBoostingClassifier at its default settings, with the score held monotone in every signal of
RISING (more of it never lowers the score), and exported to plain arrays so scoring needs no fitted
estimator object.

A logistic regression (`ScoreModel`, kind "logistic") on the signals, standardised, z_s = (x_s - mean_s) / scale_s:
p = 1 / (1 + exp(-(b + sum_s w_s z_s))), or with `degree` 2 also on every product z_s z_t (s <= t, squares
included): the one nonlinearity allowed, so that e.g. weak firings can count against a latent unless a
partner latent explains them (chosen on the fit split, docs/detection.md).
Its weights are data, `score_weights.json` beside this file, written by the detection benchmark
(studies/detection_benchmark.py) together with how they were fitted (world families, the world
seeds fitted on, the number of latents) and the threshold for the `broken` verdict. Nothing here
reads a true feature: the truth only entered the fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHTS_FILE = Path(__file__).with_name("score_weights.json")


@dataclass(frozen=True)
class ScoreModel:
    signals: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float
    """`broken` is score >= threshold."""
    fitted: dict
    """How the weights were fitted (benchmark, split, counts): copied into inspect.json."""
    degree: int = 1
    """1: linear in the standardised signals; 2: also their pairwise products (features_of)."""

    def probability(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """Score per latent from {signal: [K]}; every signal the model names must be present."""
        X = np.stack([np.asarray(signals[s], dtype=np.float64) for s in self.signals], axis=1)
        z = self.intercept + features_of((X - self.mean) / self.scale, self.degree) @ self.coef
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def to_json(self) -> dict:
        return {
            "kind": "logistic",
            "signals": list(self.signals),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "threshold": self.threshold,
            "degree": self.degree,
            "fitted": self.fitted,
        }

    @classmethod
    def from_json(cls, data: dict) -> "ScoreModel":
        return cls(
            tuple(data["signals"]),
            np.array(data["mean"], float),
            np.array(data["scale"], float),
            np.array(data["coef"], float),
            float(data["intercept"]),
            float(data["threshold"]),
            data.get("fitted", {}),
            int(data.get("degree", 1)),
        )


def features_of(Z_LS: np.ndarray, degree: int) -> np.ndarray:
    """The model's inputs from standardised signals [L, S]: Z itself, and with degree 2 then every
    product Z_s Z_t for s <= t in row-major order (S (S + 1) / 2 more columns)."""
    if degree == 1:
        return Z_LS
    s, t = np.triu_indices(Z_LS.shape[1])
    return np.concatenate([Z_LS, Z_LS[:, s] * Z_LS[:, t]], axis=1)


RISING = frozenset(
    {
        "peak_separated_weight",
        "peak_spread",
        "weak_firing_share",
        "encoder_turn",
        "exclusive_overlap",
        "exclusive_miss",
        "active_rate",
        "decoder_negative",
        "partner_fires_weak",
        "cofire_overlap",
    }
)
"""Signals along which the tree score may only rise: each measures more of a defect. Left free:
`encoder_decoder_gap` (a defect beside a partner latent, but every untied latent has some),
`decoder_overlap` (a clean latent beside a duplicate has it too) and `weak_with_partner` (it explains weak
firings away, so it lowers the score as often as it raises it)."""

NODE_FIELDS = ("feature", "threshold", "left", "right", "value", "missing_left")
"""A tree as parallel arrays over its nodes: node n asks signals[feature[n]] <= threshold[n] and goes to
left[n] (also when the signal is NaN and missing_left[n]) or right[n]; a leaf has feature -1 and adds
value[n] to the log-odds."""


@dataclass(frozen=True)
class TreeScoreModel:
    signals: tuple[str, ...]
    trees: tuple[dict, ...]
    """Each {field of NODE_FIELDS: array over the tree's nodes}, node 0 the root."""
    baseline: float
    """The log-odds before any tree."""
    threshold: float
    fitted: dict

    def probability(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        X = np.stack([np.asarray(signals[s], dtype=np.float64) for s in self.signals], axis=1)
        rows = np.arange(len(X))
        z = np.full(len(X), self.baseline)
        for tree in self.trees:
            node = np.zeros(len(X), dtype=np.int64)
            inner = tree["feature"][node] >= 0
            while inner.any():
                at = node[inner]
                x = X[rows[inner], tree["feature"][at]]
                go_left = (x <= tree["threshold"][at]) | (np.isnan(x) & tree["missing_left"][at])
                node[inner] = np.where(go_left, tree["left"][at], tree["right"][at])
                inner = tree["feature"][node] >= 0
            z += tree["value"][node]
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def to_json(self) -> dict:
        return {
            "kind": "trees",
            "signals": list(self.signals),
            "baseline": self.baseline,
            "threshold": self.threshold,
            "trees": [{f: tree[f].tolist() for f in NODE_FIELDS} for tree in self.trees],
            "fitted": self.fitted,
        }

    @classmethod
    def from_json(cls, data: dict) -> "TreeScoreModel":
        types = {"feature": np.int64, "left": np.int64, "right": np.int64, "missing_left": bool}
        return cls(
            tuple(data["signals"]),
            tuple(
                {f: np.array(tree[f], dtype=types.get(f, np.float64)) for f in NODE_FIELDS}
                for tree in data["trees"]
            ),
            float(data["baseline"]),
            float(data["threshold"]),
            data.get("fitted", {}),
        )

    def splits(self) -> dict[str, int]:
        """How many questions the trees ask of each signal (a rough share of the work, not an effect)."""
        used = np.concatenate([t["feature"][t["feature"] >= 0] for t in self.trees])
        return {s: int((used == i).sum()) for i, s in enumerate(self.signals)}


@dataclass(frozen=True)
class MeanScoreModel:
    """The mean of its members' probabilities. Trees and a logistic regression with products err in
    different places off the worlds they were fitted on (a tree's step where the data ran out, a
    product's square far out), so their mean is steadier than either."""

    members: tuple
    threshold: float
    fitted: dict

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for member in self.members for s in member.signals))

    def probability(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        return np.mean([member.probability(signals) for member in self.members], axis=0)

    def to_json(self) -> dict:
        return {
            "kind": "mean",
            "signals": list(self.signals),
            "threshold": self.threshold,
            "members": [member.to_json() for member in self.members],
            "fitted": self.fitted,
        }

    @classmethod
    def from_json(cls, data: dict) -> "MeanScoreModel":
        members = tuple(model_from_json(member) for member in data["members"])
        return cls(members, float(data["threshold"]), data.get("fitted", {}))


SCORE_MODELS = {"logistic": ScoreModel, "trees": TreeScoreModel, "mean": MeanScoreModel}
"""The kinds of score model, by the `kind` their weights file names (files without one are logistic)."""


def model_from_json(data: dict) -> ScoreModel | TreeScoreModel | MeanScoreModel:
    return SCORE_MODELS[data.get("kind", "logistic")].from_json(data)


def load_score_model(path: Path = WEIGHTS_FILE) -> ScoreModel | TreeScoreModel | MeanScoreModel:
    return model_from_json(json.loads(Path(path).read_text()))


def fit_tree_score_model(
    X_LS: np.ndarray,
    y_L: np.ndarray,
    signals: tuple[str, ...],
    fitted: dict,
    threshold: float = 0.5,
    sample_weight_L: np.ndarray | None = None,
) -> TreeScoreModel:
    """Boosted trees (scikit-learn's defaults, no early stopping so the fit is deterministic; classes
    balanced, `sample_weight_L` multiplying) of the truth y on the signals X, monotone in RISING."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    fit = HistGradientBoostingClassifier(
        monotonic_cst=[int(s in RISING) for s in signals],
        class_weight="balanced",
        early_stopping=False,
        random_state=0,
    ).fit(X_LS, y_L.astype(int), sample_weight=sample_weight_L)
    trees = []
    # The fitted predictors' node arrays (scikit-learn's own layout), kept to the fields scoring reads.
    for (predictor,) in fit._predictors:
        nodes = predictor.nodes
        trees.append(
            {
                "feature": np.where(nodes["is_leaf"], -1, nodes["feature_idx"]).astype(np.int64),
                "threshold": nodes["num_threshold"].astype(np.float64),
                "left": nodes["left"].astype(np.int64),
                "right": nodes["right"].astype(np.int64),
                "value": np.where(nodes["is_leaf"], nodes["value"], 0.0).astype(np.float64),
                "missing_left": nodes["missing_go_to_left"].astype(bool),
            }
        )
    return TreeScoreModel(
        tuple(signals), tuple(trees), float(fit._baseline_prediction.ravel()[0]), threshold, fitted
    )


def fit_score_model(
    X_LS: np.ndarray,
    y_L: np.ndarray,
    signals: tuple[str, ...],
    fitted: dict,
    threshold: float = 0.5,
    C: float = 1.0,
    sample_weight_L: np.ndarray | None = None,
    degree: int = 1,
) -> ScoreModel:
    """Logistic regression (L2, class-balanced) of the truth y on the standardised signals X (and
    with `degree` 2 their pairwise products); `sample_weight_L` multiplies the class weights (the
    benchmark weights its cleanest latents up)."""
    from sklearn.linear_model import LogisticRegression

    mean = X_LS.mean(0)
    scale = X_LS.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    lr = LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit(
        features_of((X_LS - mean) / scale, degree), y_L.astype(int), sample_weight=sample_weight_L
    )
    return ScoreModel(
        tuple(signals),
        mean,
        scale,
        lr.coef_[0].copy(),
        float(lr.intercept_[0]),
        threshold,
        fitted,
        degree,
    )
