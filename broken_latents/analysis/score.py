"""One calibrated score per latent: the probability that it is broken, from its signals (signals.py).

A logistic regression on the signals, standardised: p = 1 / (1 + exp(-(b + sum_s w_s (x_s - mean_s) / scale_s))).
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

    def probability(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """Score per latent from {signal: [K]}; every signal the model names must be present."""
        X = np.stack([np.asarray(signals[s], dtype=np.float64) for s in self.signals], axis=1)
        z = self.intercept + ((X - self.mean) / self.scale) @ self.coef
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def to_json(self) -> dict:
        return {
            "signals": list(self.signals),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "threshold": self.threshold,
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
        )


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
) -> ScoreModel:
    """Logistic regression (L2, class-balanced) of the truth y on the standardised signals X;
    `sample_weight_L` multiplies the class weights (the benchmark weights its cleanest latents up)."""
    from sklearn.linear_model import LogisticRegression

    mean = X_LS.mean(0)
    scale = X_LS.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    lr = LogisticRegression(C=C, max_iter=2000, class_weight="balanced").fit(
        (X_LS - mean) / scale, y_L.astype(int), sample_weight=sample_weight_L
    )
    return ScoreModel(
        tuple(signals), mean, scale, lr.coef_[0].copy(), float(lr.intercept_[0]), threshold, fitted
    )
