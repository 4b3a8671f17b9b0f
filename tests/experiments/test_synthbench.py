"""The scale studies: registered, left out of `reproduce`, sized honestly by preflight."""

import pytest

from broken_latents.config.schema import ConfigError
from broken_latents.experiments import EXPERIMENTS
from broken_latents.training.preflight import check_config, estimate_seconds


def test_synthbench_16k_is_refused_on_a_cpu_and_sized_for_a_gpu():
    config = EXPERIMENTS["synthbench-16k"].config
    assert (
        config.world.features,
        config.world.dim,
        config.sae[0].latents,
        config.train.samples,
    ) == (16384, 768, 4096, 200_000_000)
    with pytest.raises(ConfigError) as err:
        check_config(config, "cpu")
    assert err.value.field == "train.samples" and "--device cuda" in str(err.value)
    check_config(config, "cuda")  # 200M samples: about an hour, bound by the sampler
    assert estimate_seconds(config, "cuda") < estimate_seconds(config, "cpu") / 50


def test_synthbench_4k_fits_in_minutes_and_neither_is_reproduced():
    config = EXPERIMENTS["synthbench-4k"].config
    check_config(config, "cpu")
    assert estimate_seconds(config, "cpu") < 3600
    assert [s.label for s in config.sae] == [
        "tied",
        "untied",
        "batchtopk",
        "matryoshka",
        "tied-aux",
    ]
    assert (
        not EXPERIMENTS["synthbench-4k"].reproduced and not EXPERIMENTS["synthbench-16k"].reproduced
    )
    assert not EXPERIMENTS["synthbench-4k"].claims  # none until measured
