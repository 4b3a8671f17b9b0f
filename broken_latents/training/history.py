"""The training history: every loss term an SAE declares, per logged step, per SAE and seed.

history.json in a run directory is `TrainingHistory.to_json()`:

    {"steps": [samples seen at each logged step, ...],
     "runs": [{"label": "tied", "seed": 0, "terms": {"mse": [...], "l1": [...], "aux": [...]}}, ...]}

Each term's list runs parallel to "steps"; null where the SAE did not compute the term at that
step (the aux loss before its delay ends) or where the value was not finite (JSON has no NaN).
Values are batch means of the unweighted term (the aux loss without its lambda), as
`StackedSAE.loss_terms` declares them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class RunHistory:
    """One SAE (label) and seed."""

    label: str
    seed: int
    terms: dict[str, list[float | None]] = field(default_factory=dict)
    """Each term's value per logged step (parallel to `TrainingHistory.steps`); None where not computed."""


@dataclass
class TrainingHistory:
    steps: list[int] = field(default_factory=list)
    """Samples seen (per SAE) at each logged step."""
    runs: list[RunHistory] = field(default_factory=list)
    """One per SAE label and seed, labels in config order, seeds ascending."""

    @classmethod
    def empty(cls, labels: list[str], seeds: list[int]) -> TrainingHistory:
        return cls([], [RunHistory(label, seed) for label in labels for seed in seeds])

    def record(self, samples: int, logged: dict) -> None:
        """Add a logged step: `logged` is {label: {term: values per seed, in the runs' seed order}}."""
        per_seed = {
            label: {name: values.reshape(-1).tolist() for name, values in terms.items()}
            for label, terms in logged.items()
        }
        position: dict[str, int] = {}
        for run in self.runs:
            s = position[run.label] = position.get(run.label, -1) + 1
            values = per_seed.get(run.label, {})
            for name in values:
                run.terms.setdefault(name, [None] * len(self.steps))
            for name, per_step in run.terms.items():
                per_step.append(_finite(values[name][s]) if name in values else None)
        self.steps.append(samples)

    def means(self, step: int = -1) -> dict[str, dict[str, float]]:
        """{label: {term: mean over the seeds}} at logged step `step` (the latest by default), over the
        seeds where the term has a value; terms no seed computed are left out."""
        values: dict[str, dict[str, list[float]]] = {}
        for run in self.runs:
            for name, per_step in run.terms.items():
                if per_step[step] is not None:
                    values.setdefault(run.label, {}).setdefault(name, []).append(per_step[step])
        return {
            label: {name: sum(v) / len(v) for name, v in terms.items()}
            for label, terms in values.items()
        }

    def run(self, label: str, seed: int) -> RunHistory:
        return next(r for r in self.runs if r.label == label and r.seed == seed)

    def to_json(self) -> dict:
        return {
            "steps": list(self.steps),
            "runs": [
                {
                    "label": r.label,
                    "seed": r.seed,
                    "terms": {k: list(v) for k, v in r.terms.items()},
                }
                for r in self.runs
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> TrainingHistory:
        return cls(
            list(data["steps"]),
            [
                RunHistory(r["label"], r["seed"], {k: list(v) for k, v in r["terms"].items()})
                for r in data["runs"]
            ],
        )


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
