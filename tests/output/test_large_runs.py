"""Runs too large for inline tables: matrices in DIR/arrays/*.npy, figures of the top latents, a
terminal table of bounded size, and run directories the disk cannot hold refused before training."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from broken_latents.analysis.metrics import INLINE_MAX, inline_or_array, read_metrics, save_arrays
from broken_latents.config.schema import (
    ConfigError,
    ExperimentConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.output import plots
from broken_latents.output.plots import TOP_LATENTS, top_latents, write_run_figures
from broken_latents.output.show import SHOWN_LATENTS, show_run
from broken_latents.training.preflight import check_outputs, estimate_memory, output_bytes
from factories import metrics, run_metrics, world_metrics

LATENTS, FEATURES = 96, 700  # 67,200 entries: above INLINE_MAX


def _large_run(seed=0):
    rng = np.random.default_rng(seed)
    decoder = rng.uniform(-0.3, 0.3, (LATENTS, FEATURES))
    decoder[np.arange(LATENTS), np.arange(LATENTS)] = 0.99
    latent = np.eye(LATENTS)
    return run_metrics(
        decoder_cos=[[0.0]],
        encoder_cos=inline_or_array(decoder),
        decoder_norms=[1.0] * LATENTS,
        activation_peaks=[1] * LATENTS,
        latent_cos=inline_or_array(latent),
    ), decoder


def _large_metrics():
    run, decoder = _large_run()
    run.decoder_cos = inline_or_array(decoder)
    world = world_metrics(
        FEATURES,
        feature_cos=inline_or_array(np.eye(FEATURES)),
        expected_mse_ranking=list(range(FEATURES)),
    )
    return metrics(runs=[run], world=world), decoder


def test_large_matrices_go_to_npy_files_and_load_back(tmp_path):
    assert LATENTS * FEATURES > INLINE_MAX
    m, decoder = _large_metrics()
    written = save_arrays(m, tmp_path)
    assert sorted(written) == [
        "arrays/tied-seed0-decoder_cos.npy",
        "arrays/tied-seed0-encoder_cos.npy",
        "arrays/world-feature_cos.npy",
    ]  # latent_cos (96 x 96) stays inline
    data = m.to_json()
    assert data["runs"][0]["decoder_cos"] == "arrays/tied-seed0-decoder_cos.npy"
    assert isinstance(data["runs"][0]["latent_cos"], list)
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    back = read_metrics(tmp_path / "metrics.json", "DIR")
    assert back.to_json() == data  # round trip: names stay names
    run = back.runs[0]
    assert np.allclose(run.matrix("decoder_cos"), decoder, atol=1e-3)  # float16
    assert run.shape("encoder_cos") == (LATENTS, FEATURES)
    assert np.array_equal(back.world.matrix("feature_cos"), np.eye(FEATURES))


def test_small_matrices_stay_inline_as_before():
    assert inline_or_array([[0.123456, 1.0]]) == [[0.1235, 1.0]]


def test_a_missing_array_file_is_named(tmp_path):
    m, _ = _large_metrics()
    save_arrays(m, tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(m.to_json()))
    (tmp_path / "arrays" / "tied-seed0-encoder_cos.npy").unlink()
    with pytest.raises(ConfigError, match="tied-seed0-encoder_cos.npy"):
        read_metrics(tmp_path / "metrics.json", "DIR")


def test_large_run_figures_show_the_top_latents_not_the_full_table(tmp_path, monkeypatch):
    monkeypatch.setattr(
        plots, "TOP_HISTOGRAMS", 2
    )  # panels are slow to draw; a few show the layout
    monkeypatch.setattr(plots, "TOP_LATENTS", 16)
    m, _ = _large_metrics()
    acts = (
        np.arange(500)[:, None] % 100 <= np.arange(LATENTS)
    ) * 1.0  # latent j fires on (j + 1)% of inputs
    written = write_run_figures(m, {"tied-seed0": acts}, tmp_path / "figures")
    assert written["tied-seed0"] == [
        "figures/tied-seed0-decoder.png",
        "figures/tied-seed0-latents.png",
        "figures/tied-seed0-hist.png",
    ]
    top = top_latents(m.runs[0], acts)
    assert len(top) == 16 and list(top[:3]) == [LATENTS - 1, LATENTS - 2, LATENTS - 3]
    assert len(top_latents(m.runs[0], acts, count=TOP_LATENTS)) == TOP_LATENTS
    for name in written["tied-seed0"] + written["world"]:
        width, height = Image.open(tmp_path / name).size
        assert width * height < 4000 * 4000, (
            name
        )  # a 96 x 700 table of 0.5-inch cells would be 38000 px wide


def test_show_prints_a_bounded_decoder_table_of_a_large_run(tmp_path):
    m, _ = _large_metrics()
    save_arrays(m, tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(m.to_json()))
    out = io.StringIO()
    show_run(read_metrics(tmp_path / "metrics.json", "DIR"), Console(file=out, width=200))
    text = out.getvalue()
    assert f"the {SHOWN_LATENTS} of {LATENTS} latents" in text
    assert "... (72 more)" in text  # the 96 peaks per latent, cut to 24
    assert text.count("\n") < 150


def _config(features, latents, seeds=1):
    return ExperimentConfig(
        name="big",
        world=WorldConfig(features=features, dim=768, firing=0.001),
        train=TrainConfig(seeds=seeds),
        sae=[SAEConfig(label="wide", architecture="untied", latents=latents)],
    )


def test_a_run_directory_the_disk_cannot_hold_is_refused_naming_the_field(tmp_path):
    config = _config(16384, 4096)
    parts = output_bytes(config)
    # decoder and encoder tables 2 x 4096 x 16384 float16, latents 4096^2, the world's 16384^2
    assert parts["cosine tables"] == 2 * (2 * 4096 * 16384 + 4096**2) + 2 * 16384**2
    assert check_outputs(config, tmp_path, free=10 * 2**30) == sum(parts.values())
    with pytest.raises(ConfigError) as err:
        check_outputs(config, tmp_path, free=2**30)
    # the field furthest above its default, as the memory check names it
    assert (
        err.value.field == "world.features" and "GiB" in str(err.value) and "free" in str(err.value)
    )


def test_memory_of_a_synthbench_size_run_is_bounded_by_streaming():
    # 200k eval samples x 16384 features would be 13 GiB at once; streamed, the evaluation holds
    # at most the detail budget per seed. The analysis keeps float16 tables and matches one K x F
    # table at a time.
    estimate = estimate_memory(_config(16384, 4096, seeds=2))
    assert estimate.parts["evaluation"] <= 2 * 1.1 * 2**30
    tables = 2 * 2 * (2 * 4096 * 16384 + 4096**2) + 6 * 16384**2
    assert estimate.parts["analysis"] == tables + 20 * 4096 * 16384


def test_show_tables_the_synthbench_metrics_when_present():
    scores = dict(
        mcc=0.757,
        uniqueness=0.9,
        f1=0.732,
        precision=0.8,
        recall=0.7,
        sae_l0=25.0,
        true_l0=34.0,
        dead_count=3,
        shrinkage=0.95,
    )
    out = io.StringIO()
    show_run(metrics(runs=[run_metrics(**scores)]), Console(file=out, width=200))
    row = next(line for line in out.getvalue().splitlines() if "0.76" in line)
    assert all(cell in row for cell in ("0.76", "0.90", "0.73", "25.00", "34.00", " 3 ", "0.95"))
    out = io.StringIO()
    show_run(metrics(), Console(file=out, width=200))  # a run from before these metrics: no table
    assert "SynthSAEBench" not in out.getvalue()


def test_the_cli_refuses_a_run_directory_the_disk_cannot_hold_before_training(
    tmp_path, monkeypatch, capsys
):
    import shutil

    import broken_latents.pipeline.run as pipeline_run
    from broken_latents.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(pipeline_run, "train_run", refuse)
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096)
    )
    with pytest.raises(SystemExit) as exit_:
        main(["run", "recap-absorption", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "writes about" in err and "free" in err and not (tmp_path / "run").exists()
