"""The scale studies: registered, left out of `reproduce`, sized honestly by preflight."""

import copy

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
    check_config(config, "cuda")  # 200M samples: over an hour, bound by the CPU's sampler
    assert estimate_seconds(config, "cuda") < estimate_seconds(config, "cpu") / 20


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
    assert config.train.seeds == 2  # claims over seeds: both must hold (claims.seeds_needed)
    # Its metrics read the samples the per-latent analyses hold: no second draw of the held-out stream.
    from broken_latents.analysis.measure import DETAIL_BYTES, detail_bytes_per_sample

    per_sample = detail_bytes_per_sample(4096, 256, [sae.latents for sae in config.sae])
    assert config.train.eval_samples <= DETAIL_BYTES // per_sample
    ids = {claim.id for claim in EXPERIMENTS["synthbench-4k"].claims}
    assert {"matryoshka-beats-batchtopk", "aux-keeps-f1", "no-absorption-gap"} <= ids


def test_the_comparison_checks_decide_on_the_numbers_and_name_them():
    from broken_latents.experiments import checks as c
    from broken_latents.experiments.synthbench import f1, mean_absorption_gap
    from broken_latents.analysis.metrics import AbsorptionGap
    from factories import run_metrics, world_metrics

    runs = {
        "a": run_metrics(
            label="a", f1=0.60, absorption_gap=[AbsorptionGap(parent=0, child=1, latent=0, gap=0.3)]
        ),
        "b": run_metrics(
            label="b",
            f1=0.50,
            absorption_gap=[AbsorptionGap(parent=0, child=1, latent=0, gap=None)],
        ),
    }
    world = world_metrics()
    assert c.compares("a", "b", "F1", f1, 0.05)(runs, world) == (
        True,
        "F1 a 0.6000, b 0.5000 (difference +0.1000)",
    )
    assert not c.compares("a", "b", "F1", f1, 0.2)(runs, world)[0]
    assert not c.compares("b", "a", "F1", f1, 0.0)(runs, world)[0]
    assert c.within("a", "b", "F1", f1, 0.1 + 1e-9)(runs, world)[0]
    assert not c.within("a", "b", "F1", f1, 0.05)(runs, world)[0]
    # An edge whose conditions never occurred (gap None) does not count; none at all: 0.
    assert mean_absorption_gap(runs["a"]) == 0.3 and mean_absorption_gap(runs["b"]) == 0.0
    assert not c.bounded(["a", "b"], "gap", mean_absorption_gap, -0.01, 0.01)(runs, world)[0]
    assert c.bounded(["b"], "gap", mean_absorption_gap, -0.01, 0.01)(runs, world) == (
        True,
        "gap b 0.0000",
    )


def _synthbench_like(
    features: int, dim: int, latents: int, samples: int, seeds: int, eval_samples: int
):
    """synthbench-4k's SAEs (labels, architectures, activations) on a smaller synthbench_world."""
    from dataclasses import replace

    from broken_latents.experiments.synthbench import synthbench_world

    config = copy.deepcopy(EXPERIMENTS["synthbench-4k"].config)
    config.world = synthbench_world(features, dim)
    k = 4
    config.sae = [
        replace(
            sae,
            latents=latents,
            k=None if sae.k is None else k,
            matryoshka_widths=None if sae.matryoshka_widths is None else [latents // 4, latents],
        )
        for sae in config.sae
    ]
    config.train = replace(
        config.train, samples=samples, batch_size=256, seeds=seeds, eval_samples=eval_samples
    )
    return config


def test_a_synthbench_like_world_gives_the_table_for_every_sae_and_seed(monkeypatch):
    from broken_latents.analysis import measure as measure_module
    from broken_latents.experiments.synthbench import TABLE, synthbench_table, table_markdown
    from broken_latents.pipeline.resolve import claims_of
    from broken_latents.pipeline.run import train_and_measure
    from broken_latents.world.model import World

    # Peak models and the world's sampled rates are not what the table is: fewer of both, for speed.
    monkeypatch.setattr(measure_module, "PEAK_MODELS_MAX", 2)
    monkeypatch.setattr(World, "STATS_SAMPLES", 16_384)

    config = _synthbench_like(256, 32, 32, samples=4096, seeds=2, eval_samples=2000)
    _, metrics = train_and_measure(claims_of(config))
    rows = synthbench_table(metrics)
    assert [row["label"] for row in rows] == [
        "tied",
        "untied",
        "batchtopk",
        "matryoshka",
        "tied-aux",
    ]
    for row in rows:
        assert row["seeds"] == 2
        assert set(TABLE) | {"broken_latents", "absorption_gap"} <= set(row)
        for name in ("mcc", "uniqueness", "precision", "recall", "f1"):
            assert 0 <= row[name]["min"] <= row[name]["mean"] <= row[name]["max"] <= 1
        assert row["dead_count"]["max"] <= 32
    by_label = {row["label"]: row for row in rows}
    # k = 4 sets the k-sparse SAEs' L0 (BatchTopK: on average over the batch); the ReLU ones are free.
    assert by_label["batchtopk"]["sae_l0"]["mean"] == pytest.approx(4, abs=1.0)
    # The world's tree gives parent -> child edges, so the absorption gap is measured.
    assert all(run.absorption_gap for run in metrics.runs)
    table = table_markdown(metrics)
    assert table.count("\n") == 1 + len(rows) and "| batchtopk |" in table
    # The claims were evaluated over both seeds (whatever they say at this budget).
    assert metrics.claims and all(claim.seeds_run == 2 for claim in metrics.claims)


def test_the_analysis_of_a_width_1024_stack_stays_bounded(monkeypatch):
    # One batch of training is enough: what is bounded is how much the analysis holds and fits.
    from broken_latents.analysis import measure as measure_module
    from broken_latents.pipeline.resolve import claims_of
    from broken_latents.pipeline.run import train_and_measure
    from broken_latents.world.model import World

    monkeypatch.setattr(
        World, "STATS_SAMPLES", 16_384
    )  # the world's rates: not what is bounded here

    config = _synthbench_like(1024, 64, 1024, samples=512, seeds=1, eval_samples=1500)
    config.sae = [
        sae for sae in config.sae if sae.label == "untied"
    ]  # dense activations: the heavy case
    result, metrics = train_and_measure(claims_of(config))
    assert measure_module.detail_samples(result) == 1500
    for run in metrics.runs:
        live = 1024 - len(run.dead_latents)
        assert len(run.peak_models) == min(measure_module.PEAK_MODELS_MAX, live) == 64
        assert (
            len(run.activation_peaks) == len(run.histogram_peaks) == 1024
        )  # every latent's histogram
        assert run.firing_patterns == []  # sets x latents: not at this width
        assert not isinstance(run.decoder_cos, list)  # 1024 x 1024: an array (to an .npy), not JSON
        assert len(run.absorption) == len(run.hedging) == 1024
