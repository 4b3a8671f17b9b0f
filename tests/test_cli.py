"""The CLI contract: list, run (TOML or name), show, rerun from config.toml; bad input exits 2 cleanly."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from broken_latents.cli import main
from broken_latents.experiments import EXPERIMENTS
from broken_latents.analysis.metrics import Metrics
from broken_latents.output.show import geometry_line
from factories import as_older_version, world_metrics
from worlds import TINY

RUN_KEYS = {
    "label",
    "seed",
    "decoder_cos",
    "encoder_cos",
    "latent_cos",
    "decoder_norms",
    "matches",
    "learned_features",
    "broken_latents",
    "dead_latents",
    "activation_peaks",
    "mse",
    "l0",
    "explained_variance",
}


def _exit_code(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny.toml").write_text(TINY)
    main(["run", str(root / "tiny.toml"), "--out", str(root / "run")])
    return root / "run"


def test_list_names_every_experiment(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)


def test_run_directory_contract(tiny_run):
    assert (tiny_run / "config.toml").is_file() and (tiny_run / "report.md").is_file()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    typed = Metrics.from_json(
        metrics
    ).to_json()  # the typed schema round-trips, keys and their order
    assert (
        typed == metrics
        and list(typed) == list(metrics)
        and list(typed["runs"][0]) == list(metrics["runs"][0])
    )
    older = as_older_version(metrics)  # and a file from before the newer keys gains none of them
    assert Metrics.from_json(older).to_json() == older
    assert {"name", "samples", "wall_seconds", "samples_per_second", "runs", "claims"} <= set(
        metrics
    )
    assert metrics["name"] == "tiny-world" and metrics["samples"] >= 150_000
    assert len(metrics["runs"]) == 4  # 2 SAEs x 2 seeds
    world = metrics["world"]
    assert (
        world["magnitudes"] == [1.0] * 4
        and world["welch_bound"] == 0.0
        and world["max_feature_cos"] < 1e-5
    )
    for run in metrics["runs"]:
        assert RUN_KEYS <= set(run)
        assert len(run["decoder_cos"]) == (4 if run["label"] == "tied" else 3)
        assert len(run["decoder_cos"][0]) == 4
        assert len(run["absorption"]) == len(run["full_absorption"]) == 4 and len(
            run["hedging"]
        ) == len(run["decoder_cos"])
        assert all(0 <= a <= 1 for a in run["absorption"] + run["full_absorption"])
    weights = load_file(str(tiny_run / "weights" / "untied-seed1.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "W_enc": (8, 3),
        "W_dec": (3, 8),
        "b_enc": (3,),
        "b_dec": (8,),
        "threshold": (3,),
    }
    assert sorted(p.name for p in (tiny_run / "figures").glob("tied-seed0-*.png"))[:2] == [
        "tied-seed0-decoder.png",
        "tied-seed0-hist.png",
    ]
    assert "![" in (tiny_run / "report.md").read_text()


def test_history_json_has_every_term_per_sae_and_seed(tiny_run):
    history = json.loads((tiny_run / "history.json").read_text())
    steps = history["steps"]
    assert steps == sorted(steps) and steps[-1] >= 150_000 and len(steps) >= 2
    assert [(r["label"], r["seed"]) for r in history["runs"]] == [
        ("tied", 0),
        ("tied", 1),
        ("untied", 0),
        ("untied", 1),
    ]
    for run in history["runs"]:
        assert set(run["terms"]) == {"mse", "l1"}
        assert all(
            len(values) == len(steps) and None not in values for values in run["terms"].values()
        )
        assert run["terms"]["mse"][-1] < run["terms"]["mse"][0]
    assert (
        history["runs"][0]["terms"]["mse"] != history["runs"][1]["terms"]["mse"]
    )  # seeds kept apart
    assert (tiny_run / "figures" / "loss-curves.png").is_file()
    assert "](figures/loss-curves.png)" in (tiny_run / "report.md").read_text()


@pytest.mark.slow
def test_figures_all_draws_and_details_every_seed(tiny_run, tmp_path):
    out = tmp_path / "all"
    main(
        [
            "run",
            str(tiny_run / "config.toml"),
            "--out",
            str(out),
            "--samples",
            "20000",
            "--figures",
            "all",
        ]
    )
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert {"tied-seed0-hist.png", "tied-seed1-hist.png", "untied-seed1-decoder.png"} <= names
    assert "![tied-seed1-hist](figures/tied-seed1-hist.png)" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().count("<img") >= len(names)


@pytest.mark.slow
def test_rerun_from_config_replaces_the_run(tiny_run, capsys):
    before = json.loads((tiny_run / "metrics.json").read_text())
    main(["run", str(tiny_run / "config.toml"), "--out", str(tiny_run), "--seeds", "1"])
    after = json.loads((tiny_run / "metrics.json").read_text())
    assert len(after["runs"]) == 2
    assert (
        after["runs"][0]["decoder_cos"] == before["runs"][0]["decoder_cos"]
    )  # seed 0 is seed 0 in any run
    assert not list(tiny_run.parent.glob(".run.*"))


def test_geometry_line_says_how_far_from_the_welch_bound():
    assert geometry_line(world_metrics(welch_bound=0.0, max_feature_cos=0.0)) is None
    assert geometry_line(world_metrics()) is None  # a run from before the bound was recorded
    near = geometry_line(world_metrics(welch_bound=0.05, max_feature_cos=0.051))
    far = geometry_line(world_metrics(welch_bound=0.05, max_feature_cos=0.08))
    assert "1.02x" in near and "warning" not in near
    assert "1.60x" in far and "warning" in far


@pytest.mark.parametrize(
    "path, value, where",
    [
        (
            ("runs", 0, "decoder_cos", 0, 1),
            "x",
            "runs[0].decoder_cos[0][1]: expected a number, got a string",
        ),
        (
            ("runs", 0, "matches", 0, "cos"),
            None,
            "runs[0].matches[0].cos: expected a number, got null",
        ),
        (("runs", 0, "seed"), 1.5, "runs[0].seed: expected an integer"),
        (("world",), [], "world: expected a JSON object, got a list"),
        (("runs", 0, "absorption"), {"a": 1}, "runs[0].absorption: expected a list, got an object"),
    ],
)
def test_show_names_a_wrong_value_deep_in_metrics_json(
    tiny_run, tmp_path, capsys, path, value, where
):
    """A value of the wrong kind anywhere in the file is one line naming where it is, not a
    traceback from whichever reader meets it first."""
    data = json.loads((tiny_run / "metrics.json").read_text())
    part = data
    for key in path[:-1]:
        part = part[key]
    part[path[-1]] = value
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    code, err = _exit_code(["show", str(tmp_path)], capsys)
    assert code == 2 and where in " ".join(err.split()) and "Traceback" not in err


def test_show_prints_tables(tiny_run, capsys):
    main(["show", str(tiny_run)])
    out = capsys.readouterr().out
    assert "tiny-world" in out and "learned" in out and "decoder cos" in out and "f3" in out
    assert "absorption and hedging" in out


def test_show_prints_a_metrics_json_from_an_older_version(tiny_run, tmp_path, capsys):
    older = as_older_version(json.loads((tiny_run / "metrics.json").read_text()))
    (tmp_path / "metrics.json").write_text(json.dumps(older))
    main(["show", str(tmp_path)])
    out = capsys.readouterr().out
    assert "tiny-world" in out and "learned" in out and "decoder cos" in out
    assert "absorption and hedging" not in out and "Welch" not in out


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"name": "tiny-world"}', '{"name": "x", "runs": "none"}']
)
def test_show_refuses_a_file_that_is_not_a_metrics_json_in_one_line(tmp_path, capsys, text):
    (tmp_path / "metrics.json").write_text(text)
    code, err = _exit_code(["show", str(tmp_path)], capsys)
    assert code == 2 and "RUN_DIR" in err and str(tmp_path / "metrics.json") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, field",
    [
        (["run", "no-such-experiment"], "TARGET"),
        (["run", "missing.toml"], "TARGET"),
        (["run", "narrow-independent", "--set", "train.lr=-1"], "train.lr"),
        (["run", "narrow-independent", "--set", "sae.tide.l1=1"], "sae.tide.l1"),
        (["run", "narrow-independent", "--seeds", "0"], "train.seeds"),
        (["run", "narrow-independent", "--set", "world.magnitude_std=-0.5"], "world.magnitude_std"),
        (
            ["run", "narrow-independent", "--set", "world.magnitude_std=[0.1]"],
            "world.magnitude_std",
        ),
        (["run", "narrow-independent", "--device", "tpu"], "--device"),
        (["run", "narrow-independent", "--seeds", "x"], "--seeds"),
        (["show", "/nonexistent"], "RUN_DIR"),
        (["reproduce", "--seeds", "0"], "--seeds"),
    ],
)
def test_bad_input_exits_2_naming_the_field(argv, field, capsys):
    code, err = _exit_code(argv, capsys)
    assert code == 2
    assert field in err
    assert "Traceback" not in err


def test_out_dir_that_is_not_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, err = _exit_code(["run", "narrow-independent", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--out" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_divergence_exits_2_and_leaves_nothing(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "run"
    code, err = _exit_code(
        ["run", str(tmp_path / "tiny.toml"), "--out", str(out), "--set", "world.magnitude=1e30"],
        capsys,
    )
    assert code == 2 and "NaN" in err and "train.lr" in err
    assert not out.exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.slow
def test_console_script_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "broken_latents.cli", "run", "nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "TARGET" in proc.stderr and "Traceback" not in proc.stderr


def _wait_until_catching(pid: int, signum: int, timeout: float = 120.0) -> None:
    """Wait until the process has a handler for `signum` (Linux: the SigCgt mask in /proc)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = open(f"/proc/{pid}/status").read()
        caught = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16
        )
        if caught >> (signum - 1) & 1:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} never installed a handler for signal {signum}")


@pytest.mark.slow
def test_terminated_run_leaves_nothing(tmp_path):
    import signal
    import time

    (tmp_path / "tiny.toml").write_text(TINY.replace("samples = 150_000", "samples = 500_000_000"))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broken_latents.cli",
            "run",
            str(tmp_path / "tiny.toml"),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_until_catching(
        proc.pid, signal.SIGTERM
    )  # imported (3 s idle, far longer on a busy machine)
    time.sleep(3)  # and training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_signal_inside_deferred_block_stops_at_its_end():
    """A SIGTERM during a training step (which may be compiling a kernel) stops between steps."""
    import signal

    from broken_latents.training.termination import termination

    with pytest.raises(SystemExit) as stopped:
        with termination.deferred():
            termination.request(signal.SIGTERM)  # what the handler does: no exception here
            reached_end_of_step = True
    assert reached_end_of_step and stopped.value.code == 143
    with pytest.raises(KeyboardInterrupt), termination.deferred():
        termination.request(signal.SIGINT)
        termination.check()  # the next step's check stops at once
    termination.check()  # the request was consumed: nothing left to stop for


# -- a researcher's first hour: messages whole, closed pipes, run directories given to inspect -------


def test_messages_with_markup_characters_print_verbatim(tiny_run, tmp_path, capsys):
    """rich would read "[samples, D]" or "[bold]" as style tags and drop them: every message prints as written."""
    import numpy as np

    odd = tmp_path / "acts [1d] [bold]x [red]"
    odd.mkdir()
    np.save(odd / "acts.npy", np.zeros(300, dtype=np.float32))
    code, err = _exit_code(
        [
            "inspect",
            str(tiny_run / "weights" / "tied-seed0.safetensors"),
            "--activations",
            str(odd / "acts.npy"),
        ],
        capsys,
    )
    assert (
        code == 2
        and str(odd / "acts.npy") in err
        and "[N, D]" in err
        and err.rstrip().endswith("got shape [300]")
    ), err
    code, err = _exit_code(["run", str(tmp_path / "no [red]such[/] dir" / "x.toml")], capsys)
    assert code == 2 and "no [red]such[/] dir" in err, err
    code, err = _exit_code(
        ["run", str(tiny_run / "config.toml"), "--set", "train.lr=[bold]fast[/]"], capsys
    )
    assert code == 2 and "[bold]fast[/]" in err, err
    assert err.startswith("error: train.lr") and err.count("\n") == 1


@pytest.mark.slow
def test_closed_stdout_pipe_exits_quietly():
    """`broken-latents list | head -1`: the reader is gone before we write; no traceback, nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "broken_latents.cli", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # long before the interpreter has imported the package and printed
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == "" and proc.returncode in (0, 1)


def test_inspect_given_a_run_directory_lists_its_saes(tiny_run, tmp_path, capsys):
    code, err = _exit_code(
        ["inspect", str(tiny_run), "--activations", str(tmp_path / "acts.npy")], capsys
    )
    assert code == 2 and err.startswith("error: SAE") and "run directory" in err
    for name in ("tied-seed0", "untied-seed0.safetensors"):
        assert str(tiny_run / "weights" / name) in err


STILL_LEARNING = """
name = "still-learning"
description = "a conditional child, trained far too briefly [on purpose]"
[world]
features = 4
dim = 8
firing = [0.3, 0.3, 0.3, 0.2]
[[world.hierarchy]]
parent = 0
children = [1, 2]
mode = "conditional"
[train]
samples = 40_000
batch_size = 16
lr = 3e-4
seeds = 1
eval_samples = 2_000
[[sae]]
label = "tied"
architecture = "tied"
latents = 4
"""


@pytest.mark.slow
def test_run_prints_the_world_and_warns_when_a_loss_is_still_falling(tmp_path, capsys):
    """2,500 steps at lr 3e-4 from a random start: the MSE is still falling fast at the end (13 logged steps)."""
    (tmp_path / "short.toml").write_text(STILL_LEARNING)
    main(["run", str(tmp_path / "short.toml"), "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    world = next(line for line in captured.out.splitlines() if line.startswith("world:"))
    assert (
        "4 features in 8 dims" in world
        and "0.3 given f0" in world
        and "marginal 0.3, 0.09, 0.09, 0.2" in world
    )
    assert "f1, f2 fire only with f0" in world
    run = json.loads((tmp_path / "run" / "metrics.json").read_text())["runs"][0]
    assert run["still_falling"] is True and run["loss_drop"] > 0.1 and run["falling_term"] == "mse"
    assert (
        "warning: SAE tied seed 0 had not converged" in captured.err and "--samples" in captured.err
    )
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Convergence" in report and "SAE tied seed 0 had not converged" in report
    assert "| rate as given |" in report and "0.3 given f0" in report
