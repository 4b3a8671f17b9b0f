"""One calibrated score per latent: the probability that it is broken, from its signals (signals.py).

A logistic regression on the signals, standardised, z_s = (x_s - mean_s) / scale_s:
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


def load_score_model(path: Path = WEIGHTS_FILE) -> ScoreModel:
    return ScoreModel.from_json(json.loads(Path(path).read_text()))


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
