"""history.json: every loss term an SAE declares, per logged step, per SAE and seed.

    {"steps": [samples seen at each logged step, ...],
     "runs": [{"label": "tied", "seed": 0, "terms": {"mse": [...], "l1": [...], "aux": [...]}}, ...]}

Each term's list runs parallel to "steps"; null where the SAE did not compute the term at that
step (the aux loss before its delay ends). Values are batch means of the unweighted term (the aux
loss without its lambda), as `StackedSAE.loss_terms` declares them."""

from __future__ import annotations


def history_json(seed_history: list[dict], labels: list[str], seeds: list[int]) -> dict:
    """From `TrainResult.seed_history` ({"samples", LABEL: {term: [per seed]}} per logged step)."""
    runs = []
    for label in labels:
        names = list(dict.fromkeys(name for record in seed_history for name in record.get(label, {})))
        for s, seed in enumerate(seeds):
            terms = {name: [_value(record.get(label, {}).get(name), s) for record in seed_history] for name in names}
            runs.append({"label": label, "seed": seed, "terms": terms})
    return {"steps": [record["samples"] for record in seed_history], "runs": runs}


def _value(per_seed: list[float] | None, s: int) -> float | None:
    if per_seed is None:
        return None
    value = float(per_seed[s])
    return value if value == value and abs(value) != float("inf") else None  # JSON has no NaN
