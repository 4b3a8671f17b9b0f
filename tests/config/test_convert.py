"""The one dict <-> dataclass converter (config/convert.py): what each file kind's dialect reads,
refuses and writes back."""

import json

import pytest

from broken_latents.analysis.metrics import SchemaError, WorldMetrics
from broken_latents.config.convert import structure, unstructure
from broken_latents.config.schema import ConfigError, ExperimentConfig, TrainConfig


@pytest.mark.parametrize(
    "train, message",
    [
        # what cattrs 26 read silently (2.5 as 2, "no" as true), refused here with the value named
        ({"samples": 2.5}, "train.samples: must be an integer, got 2.5"),
        ({"unit_norm_decoder": "no"}, "train.unit_norm_decoder: must be true or false, got 'no'"),
        ({"init": "zeros"}, "train.init: must be one of 'random', 'orthogonal'; got 'zeros'"),
        ({"sampels": 5}, "train.sampels: unknown key; allowed keys here: samples, batch_size"),
    ],
)
def test_config_errors_name_the_field_the_value_and_what_is_allowed(train, message):
    with pytest.raises(ConfigError) as err:
        structure(ExperimentConfig, {"name": "x", "train": train})
    assert str(err.value).startswith(message)


def test_config_numbers_take_the_field_type():
    train = structure(TrainConfig, {"samples": 2000.0, "lr": 1})
    assert (train.samples, type(train.samples)) == (2000, int)
    assert (train.lr, type(train.lr)) == (1.0, float)


def test_config_list_entries_are_named_by_label():
    with pytest.raises(ConfigError, match=r"^sae\.wide\.latents: must be an integer, got 'x'"):
        structure(ExperimentConfig, {"name": "x", "sae": [{"label": "wide", "latents": "x"}]})


WORLD = {
    "expected_mse": [1, 0.5],
    "expected_mse_ranking": [0, 1],
    "feature_cos": "arrays/world-feature_cos.npy",
    "firing_rates": [0.2, 0.1],
    "hierarchy": None,
    "later_key": {"a": 1},
}


def test_schema_keeps_numbers_and_unknown_keys_as_written():
    world = WorldMetrics.from_json(WORLD)
    assert world.expected_mse == [1, 0.5] and type(world.expected_mse[0]) is int
    assert world.feature_cos == "arrays/world-feature_cos.npy"  # the union's file-name form
    assert world.extra == {"later_key": {"a": 1}}
    written = {k: v for k, v in WORLD.items() if v is not None}
    assert json.dumps(unstructure(world)) == json.dumps(written)


def test_schema_errors_name_the_index():
    with pytest.raises(SchemaError, match=r"^expected_mse\[1\]: expected a number, got a string$"):
        WorldMetrics.from_json({**WORLD, "expected_mse": [1, "x"]})
    with pytest.raises(SchemaError, match=r"^firing_rates: required key missing$"):
        WorldMetrics.from_json({k: v for k, v in WORLD.items() if k != "firing_rates"})
