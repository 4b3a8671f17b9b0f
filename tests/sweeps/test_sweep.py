"""Sweeps: the spec and its grid, a tiny sweep end to end (cells, sweep.json, maps, report), failing
cells, a worker that dies, SIGKILL and resume, and the same metrics on Ray as on the local pool."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broken_latents.cli import main
from broken_latents.config.schema import ConfigError
from broken_latents.sweeps import SweepRecord, grid, parse_spec, run_sweep
from broken_latents.sweeps.executors import run_cell
from broken_latents.sweeps.spec import cell_name

ROOT = Path(__file__).resolve().parents[2]

# A TOML named like a registered experiment keeps its claims: the recap world, shrunk.
BASE = """
name = "recap-absorption"
[world]
features = 4
dim = 8
firing = [0.25, 0.05, 0.25, 0.25]
[[world.hierarchy]]
parent = 0
children = [1]
[train]
samples = 40_000
batch_size = 256
lr = 3e-3
seeds = 2
eval_samples = 2_000
[[sae]]
label = "untied"
architecture = "untied"
latents = 4
[[sae]]
label = "tied"
architecture = "tied"
latents = 4
"""

SPEC = """
base = "base.toml"
seeds = 2
claims = ["tied-clean", "untied-absorbs"]
[set]
"train.samples" = 40_000
[axes]
"world.firing[0]" = [0.2, 0.3]
"train.lr" = [3e-3, 1e30]
"""
CELLS = 4
GOOD = 2  # lr 1e30 diverges


def _write_spec(root: Path, spec: str = SPEC) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "base.toml").write_text(BASE)
    (root / "spec.toml").write_text(spec)
    return root / "spec.toml"


def crash_once(task, marker: str):
    """The first cell to reach here kills its worker process (as the OOM killer would); then all run."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return run_cell(task)
    os.close(fd)
    os._exit(1)


def _without_timings(record) -> dict:
    record = record if isinstance(record, dict) else record.to_json()
    return {
        **record,
        "cells": [{k: v for k, v in c.items() if k != "wall_seconds"} for c in record["cells"]],
    }


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny sweep on the local pool, where the first cell's worker dies once and is retried."""
    root = tmp_path_factory.mktemp("sweep")
    spec = _write_spec(root)
    outcome = run_sweep(
        spec,
        out=root / "out",
        workers=2,
        progress=False,
        cell_function=functools.partial(crash_once, marker=str(root / "crashed")),
    )
    assert (root / "crashed").exists()
    return root, outcome


@pytest.mark.slow
def test_sweep_directory_contract(swept):
    root, outcome = swept
    out = root / "out"
    text = (out / "sweep.json").read_text()
    record = json.loads(text)
    assert record == outcome.record.to_json()
    assert (
        json.dumps(SweepRecord.from_json(record).to_json(), indent=1) == text
    )  # typed, and byte for byte
    assert {"base", "seeds", "axes", "cells"} <= set(record) and record["seeds"] == 2
    assert record["axes"] == {"world.firing[0]": [0.2, 0.3], "train.lr": [3e-3, 1e30]}
    assert len(record["cells"]) == CELLS
    assert [c["values"] for c in record["cells"]] == [
        {"world.firing[0]": a, "train.lr": b} for a in (0.2, 0.3) for b in (3e-3, 1e30)
    ]
    done = [c for c in record["cells"] if c["status"] == "done"]
    failed = [c for c in record["cells"] if c["status"] == "failed"]
    assert (
        len(done) == GOOD
        and len(failed) == CELLS - GOOD
        and [c.to_json() for c in outcome.failed] == failed
    )
    for cell in done:
        assert (
            set(cell) >= {"values", "status", "error", "claims", "path"} and cell["error"] is None
        )
        assert set(cell["claims"]) == {"tied-clean", "untied-absorbs"}
        assert all(c["seeds"] == 2 and 0 <= c["held"] <= 2 for c in cell["claims"].values())
        run_dir = out / cell["path"]
        metrics = json.loads((run_dir / "metrics.json").read_text())  # an ordinary run directory
        assert (run_dir / "config.toml").is_file() and len(metrics["runs"]) == 4
        config = tomllib.loads((run_dir / "config.toml").read_text())
        assert config["world"]["firing"][:2] == [cell["values"]["world.firing[0]"], 0.05]
    for cell in failed:  # divergence is recorded with its message; the other cells went on
        assert (
            cell["values"]["train.lr"] == 1e30
            and "train.lr" in cell["error"]
            and "NaN" in cell["error"]
        )
        assert not (out / cell["path"]).exists()
    assert not [p for p in (out / "cells").iterdir() if p.name.startswith(".")]  # no partial left
    maps = sorted(p.name for p in (out / "maps").iterdir())
    assert maps == [
        "tied-clean__world.firing.0__train.lr.png",
        "untied-absorbs__world.firing.0__train.lr.png",
    ]
    page = (out / "report.html").read_text()
    assert (
        page.count("data:image/png;base64,") == 2
        and 'src="maps' not in page
        and "tied-clean" in page
    )


@pytest.mark.slow
def test_rerun_skips_finished_cells(swept, tmp_path, monkeypatch):
    root, outcome = swept
    trained = []
    import broken_latents.sweeps.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "run_local", lambda tasks, *a, **k: trained.extend(tasks))
    again = run_sweep(root / "spec.toml", out=root / "out", workers=2, progress=False)
    # only the failed (diverging) cells are tried again; the finished ones are read back
    assert sorted(t.name for t in trained) == sorted(c.path.split("/")[1] for c in outcome.failed)
    finished = [c for c in again.record.cells if c.status == "done"]
    assert finished == [c for c in outcome.record.cells if c.status == "done"]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_sweep(swept, tmp_path, capsys):
    root, outcome = swept
    spec = _write_spec(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broken_latents.cli",
            "sweep",
            str(spec),
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                cells = json.loads((out / "sweep.json").read_text())["cells"]
            except (OSError, json.JSONDecodeError):
                cells = []
            if any(
                c["status"] in ("done", "failed") and c["values"]["train.lr"] < 1 for c in cells
            ):
                break
            assert process.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no cell finished in time")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and its pool, at once
        process.wait()
    partial = json.loads((out / "sweep.json").read_text())
    assert any(c["status"] == "pending" for c in partial["cells"])  # killed mid-sweep
    finished = [c["path"] for c in partial["cells"] if c["status"] == "done"]
    stamps = {path: (out / path / "metrics.json").stat().st_mtime_ns for path in finished}
    with pytest.raises(SystemExit) as exc:  # rerun the same command; cells failed, so exit 1
        main(["sweep", str(spec), "--out", str(out), "--workers", "2"])
    assert exc.value.code == 1 and "failed" in capsys.readouterr().err
    resumed = json.loads((out / "sweep.json").read_text())
    assert _without_timings(resumed) == _without_timings(outcome.record)
    # the cells finished before the kill were kept, not trained again
    assert {path: (out / path / "metrics.json").stat().st_mtime_ns for path in finished} == stamps


def test_grid_names_are_safe_and_unique():
    names = [
        cell_name(v)
        for v in [{"a[0]": 0.1}, {"a[0]": "x/y"}, {"a[0]": "x y"}, {"k": {"linear": [1, 2]}}, {}]
    ]
    assert names[:2] == ["a.0=0.1", "a.0=x_y"] and names[4] == "base"
    assert all("/" not in n and not n.startswith(".") and " " not in n for n in names)
    spec = parse_spec(
        {
            "base": "recap-absorption",
            "axes": {"world.seed": ["a/b", "a b", 1], "train.lr": [1e-3] * 1},
        }
    )
    cells = grid(spec)
    assert len({c.name for c in cells}) == 3  # 'a/b' and 'a b' both read a_b: hashed apart
    assert [c.error is not None for c in cells] == [True, True, False]
    long = cell_name({f"world.firing[{i}]": 0.123456 for i in range(20)})
    assert len(long) < 140


def test_spec_unquoted_keys_and_seeds():
    spec = parse_spec(
        {
            "base": "recap-absorption",
            "seeds": 4,
            "set": {"train": {"samples": 5}},
            "axes": {"world": {"firing[0]": [0.1, 0.2]}},
        }
    )
    assert spec.settings == {"train.samples": 5} and list(spec.axes) == ["world.firing[0]"]
    assert spec.config.train.samples == 5 and spec.config.train.seeds == 4
    assert spec.claims == ["untied-absorbs", "tied-clean"]  # default: every claim of the base
    cells = grid(spec)
    assert [c.config.world.firing[0] for c in cells] == [0.1, 0.2] and cells[0].config.world.firing[
        1
    ] == 0.05


# -- bad sweep specs: exit 2 naming the field, before any training ------------------------------

VALID_SPEC = {
    "base": "recap-absorption",
    "seeds": 2,
    "claims": ["tied-clean"],
    "set": {"train.samples": 1000},
    "axes": {"world.firing[0]": [0.1, 0.2], "train.lr": [1e-3]},
}
MISTAKES = [  # (key, value, field named)
    ("colour", "red", "colour"),
    ("base", 3, "base"),
    ("base", ["x"], "base"),
    ("base", "no-such", "base"),
    ("base", "missing.toml", "base"),
    ("seeds", "3", "seeds"),
    ("seeds", 0, "seeds"),
    ("seeds", True, "seeds"),
    ("seeds", 2.5, "seeds"),
    ("seeds", [1], "seeds"),
    ("claims", "tied-clean", "claims"),
    ("claims", [1], "claims"),
    ("claims", ["nope"], "claims[0]"),
    ("set", [1], "set"),
    ("set", 3, "set"),
    ("set", {"train.nope": 1}, "set.train.nope"),
    ("set", {"train.lr": "fast"}, "set.train.lr"),
    ("set", {"train.seeds": {"a": [1]}}, "set.train.seeds"),
    ("set", {"world.firing[9]": 0.1}, "set.world.firing[9]"),
    ("set", {"sae.tied.latents": 2.5}, "set.sae.tied.latents"),
    ("axes", [1, 2], "axes"),
    ("axes", "x", "axes"),
    ("axes", {"train.lr": 3}, "axes.train.lr"),
    ("axes", {"train.lr": []}, "axes.train.lr"),
    ("axes", {"train.lr": ["fast"]}, "axes.train.lr"),
    ("axes", {"train.nope": [1]}, "axes.train.nope"),
    ("axes", {"train.seeds": [0, -1]}, "axes.train.seeds"),
    ("axes", {"world.firing[7]": [0.1]}, "axes.world.firing[7]"),
    ("axes", {"train.samples": [5]}, "axes.train.samples"),  # also in [set]
    ("axes", {"train.seeds": [100_000]}, "axes.train.seeds"),  # more memory than the machine has
    ("axes", {"world.firng[0]": [0.1]}, "axes.world.firng[0]"),
    ("metrics", "learned", "metrics"),
    ("metrics", ["learned", "nope"], "metrics[1]"),
]


@pytest.fixture
def no_training(monkeypatch):
    import broken_latents.sweeps.sweep as sweep_module

    def refuse(*args, **kwargs):
        raise AssertionError("training started on a bad spec")

    monkeypatch.setattr(sweep_module, "run_local", refuse)
    monkeypatch.setattr(sweep_module, "run_ray", refuse)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mistake=st.sampled_from(MISTAKES), junk=st.booleans())
def test_fuzzed_sweep_specs_exit_2_naming_the_field(
    mistake, junk, tmp_path_factory, capsys, no_training
):
    key, value, field = mistake
    data = {**VALID_SPEC, key: value}
    if junk:  # nested junk elsewhere changes nothing about which field is named first
        data["set"] = (
            {**data["set"], "description": "x"} if isinstance(data["set"], dict) else data["set"]
        )
    root = tmp_path_factory.mktemp("spec")
    (root / "spec.toml").write_text(tomli_w.dumps(data))
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(root / "spec.toml"), "--out", str(root / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"error: {field}"), (field, err)
    assert not (root / "out" / "sweep.json").exists()


@settings(max_examples=15, deadline=None)
@given(
    seeds=st.integers(1, 10),
    rates=st.lists(st.floats(0, 1), min_size=1, max_size=4),
    lrs=st.lists(st.floats(1e-5, 1e-1), min_size=1, max_size=3),
)
def test_valid_specs_accepted(seeds, rates, lrs):
    spec = parse_spec(
        {
            "base": "recap-absorption",
            "seeds": seeds,
            "axes": {"world.firing[2]": rates, "train.lr": lrs},
        }
    )
    cells = grid(spec)
    assert len(cells) == len(rates) * len(lrs) and not [c.error for c in cells if c.error]


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--workers", "0"], "--workers"),
        (["--out", "FILE/sweep"], "--out"),
        (["--out", "/proc/sweep"], "--out"),
        (["--out", "NOTSWEEP"], "--out"),
    ],
)
def test_bad_sweep_flags(argv, field, tmp_path, capsys, no_training):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "NOTSWEEP").mkdir()
    (tmp_path / "NOTSWEEP" / "notes.txt").write_text("mine")
    spec = tmp_path / "spec.toml"
    spec.write_text(tomli_w.dumps(VALID_SPEC))
    argv = [
        a.replace("FILE", str(tmp_path / "FILE")).replace("NOTSWEEP", str(tmp_path / "NOTSWEEP"))
        for a in argv
    ]
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(spec), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"error: {field}"), err
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(tmp_path / "missing.toml")])
    assert exc.value.code == 2 and "SPEC" in capsys.readouterr().err


# -- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_pools_metrics_and_retries_a_dead_worker(swept, ray_session, tmp_path):
    from ray import cloudpickle

    root, outcome = swept
    spec = _write_spec(tmp_path)
    cloudpickle.register_pickle_by_value(
        sys.modules[__name__]
    )  # the test's crash_once travels by value
    on_ray = run_sweep(
        spec,
        out=tmp_path / "out",
        ray="auto",
        progress=False,
        cell_function=functools.partial(crash_once, marker=str(tmp_path / "crashed")),
    )
    assert (tmp_path / "crashed").exists()  # a worker died mid-cell, and Ray ran the cell again
    assert _without_timings(on_ray.record) == _without_timings(outcome.record)
    for cell in outcome.record.cells:
        if cell.status != "done":
            continue
        pool = json.loads((root / "out" / cell.path / "metrics.json").read_text())
        ray_metrics = json.loads((tmp_path / "out" / cell.path / "metrics.json").read_text())
        assert [r["decoder_cos"] for r in ray_metrics["runs"]] == [
            r["decoder_cos"] for r in pool["runs"]
        ]
        assert ray_metrics["claims"] == pool["claims"]


def test_example_spec_is_valid():
    from broken_latents.sweeps import load_spec

    spec = load_spec(ROOT / "examples" / "recap-absorption-sweep.toml")
    assert (
        spec.claims == ["tied-clean"]
        and len(grid(spec)) == 16
        and spec.config.train.samples == 5_000_000
    )


def test_config_error_type():
    with pytest.raises(ConfigError):
        parse_spec({"base": "recap-absorption", "seeds": -1})


# -- sweeps over one's own world: metric maps, typos, invalid cells -------------------------------

OWN_WORLD = """
name = "my-own-world"
[world]
features = 4
dim = 8
firing = [0.3, 0.1, 0.2, 0.2]
[train]
samples = 4_000
batch_size = 64
lr = 3e-3
seeds = 2
eval_samples = 1_000
[[sae]]
label = "tied"
architecture = "tied"
latents = 4
"""


@pytest.mark.slow
def test_a_sweep_over_a_world_without_claims_maps_metrics_and_reports_invalid_cells(
    tmp_path, capsys
):
    (tmp_path / "own.toml").write_text(OWN_WORLD)
    (tmp_path / "spec.toml").write_text(
        'base = "own.toml"\n[axes]\n"train.lr" = [3e-3, 1e-2]\n"sae.tied.latents" = [4, 0]\n'
    )
    with pytest.raises(SystemExit) as exc:
        main(
            ["sweep", str(tmp_path / "spec.toml"), "--out", str(tmp_path / "out"), "--workers", "1"]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2  # two cells' config is refused: an input error, the others still ran
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert record["metrics"] == [
        "learned",
        "broken",
        "explained_variance",
    ]  # the default without claims
    done = [c for c in record["cells"] if c["status"] == "done"]
    invalid = [c for c in record["cells"] if c.get("invalid")]
    assert (
        len(done) == 2
        and len(invalid) == 2
        and all(c["values"]["sae.tied.latents"] == 0 for c in invalid)
    )
    for (
        cell
    ) in done:  # the mean over the cell's seeds, as its run directory's metrics.json gives them
        runs = json.loads((tmp_path / "out" / cell["path"] / "metrics.json").read_text())["runs"]
        assert (
            cell["metrics"]["tied"]["learned"] == sum(len(r["learned_features"]) for r in runs) / 2
        )
        assert cell["metrics"]["tied"]["explained_variance"] == pytest.approx(
            sum(r["explained_variance"] for r in runs) / 2
        )
    maps = sorted(p.name for p in (tmp_path / "out" / "maps").glob("*.png"))
    assert maps == [
        f"metric-{m}__tied__train.lr__sae.tied.latents.png"
        for m in ("broken", "explained_variance", "learned")
    ]
    assert (
        "3 map(s)" in err and "2 cell(s) invalid" in err and "sae.tied.latents: must be >= 1" in err
    )
    assert "rerun" not in err.split("invalid")[1]
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<img") == 3 and "invalid: sae.tied.latents" in page


def test_the_terminal_says_when_there_is_nothing_to_map():
    from broken_latents.sweeps.maps import nothing_to_map
    from broken_latents.sweeps.record import CellRecord, SweepRecord

    cells = [
        CellRecord(values={"train.lr": 0.1}, status="done", error=None, claims={}, path="cells/x")
    ]
    plain = SweepRecord(base="b", seeds=1, claims=[], set={}, axes={"train.lr": [0.1]}, cells=cells)
    assert "no claims" in nothing_to_map(plain) and "metrics = [" in nothing_to_map(plain)
    no_axes = SweepRecord(base="b", seeds=1, claims=["c"], set={}, axes={}, cells=cells)
    assert "no [axes]" in nothing_to_map(no_axes)


def test_an_axis_key_typo_gets_runs_message(tmp_path, capsys, no_training):
    (tmp_path / "spec.toml").write_text(
        'base = "recap-absorption"\n[axes]\n"world.firng[0]" = [0.1, 0.2]\n'
    )
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(tmp_path / "spec.toml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert (
        exc.value.code == 2
        and "world.firng: unknown key; allowed keys here: features, dim, firing" in err
    )
