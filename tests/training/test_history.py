"""The typed training history: what training logs becomes history.json, unchanged in layout."""

import json

import torch

from broken_latents.training.history import RunHistory, TrainingHistory

HISTORY_JSON = {
    "steps": [100, 200],
    "runs": [
        {
            "label": "tied",
            "seed": 0,
            "terms": {"mse": [2.0, 1.0], "l1": [0.125, 0.25], "aux": [None, 0.5]},
        },
        {
            "label": "tied",
            "seed": 3,
            "terms": {"mse": [3.0, 1.5], "l1": [0.375, None], "aux": [None, 0.75]},
        },
        {"label": "samples-like", "seed": 0, "terms": {"mse": [4.0, 4.5]}},
        {"label": "samples-like", "seed": 3, "terms": {"mse": [5.0, 5.5]}},
    ],
}
"""history.json's layout: each term parallel to the steps, null where not computed (the aux loss
during its delay) or not finite."""


def _logged():
    history = TrainingHistory.empty(["tied", "samples-like"], [0, 3])
    history.record(
        100,
        {
            "tied": {"mse": torch.tensor([2.0, 3.0]), "l1": torch.tensor([0.125, 0.375])},
            "samples-like": {"mse": torch.tensor([4.0, 5.0])},
        },
    )
    history.record(
        200,
        {
            "tied": {
                "mse": torch.tensor([1.0, 1.5]),
                "l1": torch.tensor([0.25, float("nan")]),
                "aux": torch.tensor([0.5, 0.75]),
            },
            "samples-like": {"mse": torch.tensor([4.5, 5.5])},
        },
    )
    return history


def test_logged_steps_become_history_json_per_seed_with_nulls():
    history = _logged()
    assert history.to_json() == HISTORY_JSON
    assert json.dumps(history.to_json()) == json.dumps(
        HISTORY_JSON
    )  # same bytes: the key order too
    assert history.run("tied", 3) == RunHistory("tied", 3, HISTORY_JSON["runs"][1]["terms"])


def test_history_json_round_trips():
    assert TrainingHistory.from_json(HISTORY_JSON).to_json() == HISTORY_JSON
    assert TrainingHistory.from_json(json.loads(json.dumps(_logged().to_json()))) == _logged()


def test_means_over_seeds_leave_out_what_no_seed_computed():
    history = _logged()
    assert history.means(0) == {"tied": {"mse": 2.5, "l1": 0.25}, "samples-like": {"mse": 4.5}}
    assert history.means()["tied"] == {
        "mse": 1.25,
        "l1": 0.25,
        "aux": 0.625,
    }  # l1: the finite seed alone
