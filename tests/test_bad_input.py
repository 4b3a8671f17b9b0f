"""Bad input, tried as a new user would: every mistake exits 2 before any training, with one line
that names the field, and no traceback. Fuzzed experiment TOMLs and sweep specs included."""

from __future__ import annotations

import math
import re
import sys

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broken_latents import __version__
from broken_latents.cli import main
from broken_latents.config.schema import ConfigError, ExperimentConfig, WorldConfig
from broken_latents.config.toml_io import load_toml
from broken_latents.config.overrides import apply_overrides
from broken_latents.experiments import EXPERIMENTS
from broken_latents.training.preflight import (
    SEARCH_BUDGET,
    check_config,
    check_memory,
    estimate_memory,
    estimate_seconds,
    search_work,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _exit(argv, capsys) -> tuple[int, str]:
    """Exit code and stderr of the CLI; fails the test if training started (it never may here)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exc.value.code, err


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Any of these inputs reaching training is a failure in itself (and would take minutes)."""
    import broken_latents.pipeline.run as pipeline_run

    def refuse(*args, **kwargs):
        raise AssertionError("training started on bad input")

    monkeypatch.setattr(pipeline_run, "train_run", refuse)


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"broken-latents {__version__}"
    text = open("pyproject.toml").read() if __import__("os").path.exists("pyproject.toml") else ""
    if text:
        assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == __version__


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--set", "train.lr", "1e-3"], "--set train.lr=1e-3"),
        (["--set", "train.lr", "=", "1e-3"], "--set train.lr=1e-3"),
        (["--set", "train.lr=", "1e-3"], "--set train.lr=1e-3"),
        (["--set"], "KEY=VALUE"),
    ],
)
def test_set_without_equals_explains_the_form(argv, expected, capsys, tmp_path):
    code, err = _exit(["run", "recap-absorption", "--out", str(tmp_path / "r"), *argv], capsys)
    assert code == 2 and expected in err and "--set" in err


def test_set_names_the_sae_label_typed(capsys, tmp_path):
    code, err = _exit(
        ["run", "recap-absorption", "--out", str(tmp_path / "r"), "--set", "sae.tied.latents=2.5"],
        capsys,
    )
    assert code == 2 and "sae.tied.latents" in err and "sae.1" not in err


@pytest.mark.parametrize("label", ["samples", "0", "12"])
def test_a_label_that_clashes_with_a_reserved_key_exits_2(label, capsys, tmp_path):
    """ "samples" sits beside the labels where results are keyed by label; digits read as an index in --set."""
    path = tmp_path / "x.toml"
    path.write_text(f'name = "x"\n\n[[sae]]\nlabel = "{label}"\n')
    code, err = _exit(["run", str(path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.startswith("error: sae.label: ") and f"{label!r} is reserved" in err, (
        err
    )
    assert "'samples'" in err and "digits alone" in err


def test_list_elements_settable():
    config = EXPERIMENTS["recap-absorption"].config
    assert apply_overrides(config, ["world.firing[1]=0.1"]).world.firing == [0.25, 0.1, 0.25, 0.25]
    # a number or {linear} is expanded to one value per feature first
    narrow = apply_overrides(
        ExperimentConfig(name="x", world=WorldConfig(features=3, firing={"linear": [0.1, 0.3]})),
        ["world.firing[2]=0.5", "world.magnitude[0]=2"],
    )
    assert narrow.world.firing == pytest.approx([0.1, 0.2, 0.5]) and narrow.world.magnitude == [
        2,
        1.0,
        1.0,
    ]
    assert apply_overrides(config, ["world.hierarchy[0].children[0]=2"]).world.hierarchy[
        0
    ].children == [2]
    for bad, field in [
        ("world.firing[4]=0.1", "world.firing[4]"),
        ("train.lr[0]=1", "train.lr[0]"),
        ("world.firing[a]=1", "world.firing[a]"),
        ("world.firing[0]=1.5", "world.firing"),
    ]:
        with pytest.raises(ConfigError) as err:
            apply_overrides(config, [bad])
        assert err.value.field == field


@pytest.mark.parametrize(
    "out", ["/proc/broken-latents-run", "/proc/nope/run", "FILE/run", "FILE/deeper/run", "FILE"]
)
def test_unwritable_out_refused_before_training(out, capsys, tmp_path):
    (tmp_path / "FILE").write_text("not a directory")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    code, err = _exit(["run", "recap-absorption", "--out", out], capsys)
    assert code == 2 and "--out" in err


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.seeds=100000", "train.seeds"),
        ("sae.tied.latents=2000000", "sae.tied.latents"),
        ("train.batch_size=100000000", "train.batch_size"),
    ],
)
def test_sizes_the_machine_cannot_hold_refused(override, field, capsys, tmp_path):
    code, err = _exit(
        ["run", "recap-absorption", "--out", str(tmp_path / "r"), "--set", override], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert f"error: {field}:" in err and "GiB" in err and "memory" in err


def test_memory_estimate_scales_and_registered_experiments_fit():
    for name, exp in EXPERIMENTS.items():
        if (
            name != "synthbench-16k"
        ):  # the paper's size: refused on CPU by time, sized for a GPU host
            check_memory(
                exp.config, available=8 * 2**30
            )  # every other registered experiment fits in 8 GiB
    base = EXPERIMENTS["narrow-5-7-force-12"].config
    small = estimate_memory(base).total
    assert estimate_memory(apply_overrides(base, ["train.seeds=30"])).total == pytest.approx(
        10 * small, rel=0.05
    )
    with pytest.raises(ConfigError) as err:
        check_memory(base, available=small)  # more than 70% of what is there
    assert "memory" in str(err.value)


def test_runs_that_would_take_days_refused_at_once(capsys, tmp_path):
    code, err = _exit(
        ["run", "recap-absorption", "--out", str(tmp_path / "r"), "--set", "train.samples=1e12"],
        capsys,
    )
    assert code == 2 and "train.samples" in err and " h " in err and "--device cuda" in err
    assert search_work(WorldConfig(features=2000, dim=10)) < SEARCH_BUDGET
    assert (
        search_work(WorldConfig(features=4096, dim=256)) == 0
    )  # past the budget: decorrelated, no search
    assert estimate_seconds(EXPERIMENTS["recap-absorption"].config) < 600


# -- fuzzed experiment TOMLs -----------------------------------------------------------------

VALID = {
    "name": "fuzz",
    "world": {
        "features": 4,
        "dim": 8,
        "firing": [0.3, 0.1, 0.2, 0.2],
        "magnitude": 1.0,
        "seed": 0,
        "hierarchy": [{"parent": 0, "children": [1], "mode": "force"}],
    },
    "train": {"samples": 10_000, "batch_size": 256, "lr": 1e-3, "seeds": 1, "eval_samples": 2000},
    "sae": [
        {
            "label": "tied",
            "architecture": "tied",
            "latents": 4,
            "l1": 3e-3,
            "aux": {
                "coefficient": 10.0,
                "threshold_ratio": 0.7,
                "window_batches": 5,
                "delay_samples": 0,
                "warmup_samples": 0,
            },
        }
    ],
}

# (path, value) -> the field the error must name. Paths index VALID (ints into lists).
OUT_OF_RANGE = [
    (("world", "features"), 0, "world.features"),
    (("world", "dim"), -3, "world.dim"),
    (("world", "firing"), 1.5, "world.firing"),
    (("world", "firing"), [0.1, 0.2], "world.firing"),
    (("world", "firing"), {"linear": [0.1]}, "world.firing"),
    (("world", "magnitude"), -1.0, "world.magnitude"),
    (("world", "hierarchy", 0, "parent"), 9, "world.hierarchy.0.parent"),
    (("world", "hierarchy", 0, "children"), [], "world.hierarchy.0.children"),
    (("world", "hierarchy", 0, "mode"), "sometimes", "world.hierarchy.0.mode"),
    (("train", "samples"), 0, "train.samples"),
    (("train", "lr"), -1e-3, "train.lr"),
    (("train", "lr"), math.inf, "train.lr"),
    (("train", "seeds"), 0, "train.seeds"),
    (("train", "batch_size"), 0, "train.batch_size"),
    (("train", "eval_samples"), 10, "train.eval_samples"),
    (("train", "engine"), "turbo", "train.engine"),
    (("train", "lr_decay_fraction"), 2.0, "train.lr_decay_fraction"),
    (("sae", 0, "latents"), 0, "sae.tied.latents"),
    (("sae", 0, "l1"), -1.0, "sae.tied.l1"),
    (("sae", 0, "architecture"), "diagonal", "sae.tied.architecture"),
    (("sae", 0, "activation"), "gelu", "sae.tied.activation"),
    (("sae", 0, "aux", "threshold_ratio"), 0.0, "sae.tied.aux.threshold_ratio"),
    (("sae", 0, "aux", "window_batches"), 0, "sae.tied.aux.window_batches"),
    (("sae", 0, "label"), "has space", "sae.label"),
    (("sae",), [], "sae"),
]
LEAVES = {  # path -> a value of the wrong type for it
    ("name",): 3,
    ("description",): [1],
    ("world", "features"): "four",
    ("world", "dim"): 2.5,
    ("world", "seed"): "zero",
    ("world", "firing"): "often",
    ("world", "magnitude"): True,
    ("world", "hierarchy"): {"parent": 0},
    ("world", "hierarchy", 0, "parent"): "p",
    ("world", "hierarchy", 0, "children"): 1,
    ("train", "samples"): "many",
    ("train", "batch_size"): 1.5,
    ("train", "lr"): "fast",
    ("train", "seeds"): [3],
    ("train", "unit_norm_decoder"): "yes",
    ("sae", 0, "latents"): "five",
    ("sae", 0, "l1"): {"a": 1},
    ("sae", 0, "aux"): 3,
    ("sae", 0, "aux", "coefficient"): "big",
    ("world",): [1, 2],
    ("train",): 7,
    ("sae",): {"label": "x"},
}
TABLES = [(), ("world",), ("train",), ("sae", 0), ("sae", 0, "aux"), ("world", "hierarchy", 0)]
JUNK = st.recursive(
    st.one_of(st.integers(-5, 5), st.text(max_size=4), st.booleans(), st.floats(allow_nan=False)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text("abc", min_size=1, max_size=3), inner, max_size=3),
    ),
    max_leaves=6,
)


def _dotted(path) -> str:
    names, node = [], VALID
    for part in path:
        if isinstance(part, int):
            label = node[part].get("label") if isinstance(node[part], dict) else None
            names.append(label or str(part))
        else:
            names.append(part)
        node = node[part] if isinstance(node, list) or part in node else {}
    return ".".join(names)


def _set(data, path, value):
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


@st.composite
def malformed_experiment(draw):
    """A copy of VALID with one mistake, and the field the error must name."""
    data = tomllib.loads(tomli_w.dumps(VALID))
    kind = draw(st.sampled_from(["range", "type", "unknown", "junk"]))
    if kind == "range":
        path, value, field = draw(st.sampled_from(OUT_OF_RANGE))
    elif kind == "type":
        path, value = draw(st.sampled_from(list(LEAVES.items())))
        field = _dotted(path)
    else:
        table = draw(st.sampled_from(TABLES))
        key = draw(st.sampled_from(["colour", "lrr", "seeds2", "x"]))
        path, value = (*table, key), draw(JUNK) if kind == "junk" else 1
        field = ".".join(filter(None, [_dotted(table), key]))
    _set(data, path, value)
    return data, field


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=malformed_experiment())
def test_fuzzed_experiment_tomls_exit_2_naming_the_field(case, tmp_path_factory, capsys):
    data, field = case
    path = tmp_path_factory.mktemp("fuzz") / "bad.toml"
    path.write_text(tomli_w.dumps(data))
    code, err = _exit(["run", str(path), "--out", str(path.parent / "run")], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"error: {field}" in err, (field, err)


@settings(max_examples=20, deadline=None)
@given(
    seeds=st.integers(1, 5),
    latents=st.integers(1, 12),
    features=st.integers(2, 30),
    dim=st.integers(2, 40),
    rate=st.floats(0, 1),
    lr=st.floats(1e-5, 1e-1),
    label=st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True).filter(
        lambda label: label != "samples"
    ),
)
def test_valid_experiment_tomls_are_accepted(
    seeds, latents, features, dim, rate, lr, label, tmp_path_factory
):
    data = tomllib.loads(tomli_w.dumps(VALID))
    data["world"].update(features=features, dim=dim, firing=rate)
    data["train"].update(seeds=seeds, lr=lr)
    data["sae"][0].update(latents=latents, label=label)
    path = tmp_path_factory.mktemp("ok") / "ok.toml"
    path.write_text(tomli_w.dumps(data))
    config = load_toml(path)
    check_config(config)
    assert config.sae[0].label == label and config.world.features == features
