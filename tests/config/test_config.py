"""Config files: parsing, validation messages that name the field, --set overrides, round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broken_latents.config.schema import ConfigError, ExperimentConfig, SAEConfig, resolve_spec
from broken_latents.config.toml_io import dump_toml, from_dict, load_toml
from broken_latents.config.overrides import apply_overrides
from broken_latents.experiments import EXPERIMENTS

# DESIGN.md's config contract, verbatim: the example there must parse as it stands.
EXAMPLE = """
name = "narrow-5-7-force-12"
description = "Features 5 and 7 force 12; tied SAE learns broken latents"

[world]
features = 20
dim = 50                          # dim < features: near-equiangular directions (superposition)
firing = { linear = [0.015, 0.3] } # or a number, or a list with one rate per feature
magnitude = { linear = [20.0, 1.0] }
magnitude_std = 0.0               # number, list or {linear}: each firing draws N(magnitude, std), clipped at 0
seed = 0                          # seed of the feature directions

[[world.hierarchy]]
parent = 12
children = [5, 7]
mode = "force"        # "force": a child fires at its own rate and switches the parent on
                      # "conditional": a child fires only with its parent, at its rate given the parent

[train]
samples = 150_000_000
batch_size = 1024
lr = 3e-4
seeds = 3
engine = "auto"       # auto | autograd | arrays | compiled

[[sae]]               # one or more; all train in lockstep on the same data stream
label = "tied"
architecture = "tied" # tied | untied
latents = 5
activation = "relu"   # relu | jumprelu | topk | batchtopk
k = 2                 # topk / batchtopk only
l1 = 3e-3
matryoshka_widths = [1, 5]   # optional: nested prefixes, strictly increasing, last = latents

[sae.aux]             # present: activation-orthogonality loss on for this SAE
coefficient = 10_000.0
threshold_ratio = 0.7
threshold = "ratio"   # ratio (the post) | mixture (per-latent peak model)
window_batches = 50
delay_samples = 50_000_000
warmup_samples = 50_000_000
"""


def test_design_example_parses(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE)
    config = load_toml(path)
    assert config.world.hierarchy[0].children == [5, 7]
    assert config.sae[0].aux.delay_samples == 50_000_000
    assert config.train.samples == 150_000_000
    sae = config.sae[0]
    assert (sae.matryoshka_widths, sae.k, sae.aux.threshold, config.train.engine) == (
        [1, 5],
        2,
        "ratio",
        "auto",
    )
    assert sae.unused_settings()  # k beside relu: kept, said unused


def test_round_trip_through_toml(tmp_path):
    for exp in EXPERIMENTS.values():
        path = tmp_path / f"{exp.config.name}.toml"
        path.write_text(dump_toml(exp.config))
        assert load_toml(path) == exp.config


@pytest.mark.parametrize(
    "edit, field, allowed",
    [
        (("[train]", "[train]\nsamles = 3"), "train.samles", "allowed keys here"),
        (
            ('architecture = "tied"', 'architecture = "tide"'),
            "sae.tied.architecture",
            "'tied', 'untied'",
        ),
        (("lr = 3e-4", "lr = -1.0"), "train.lr", "positive"),
        (("children = [5, 7]", "children = [5, 70]"), "world.hierarchy.0.children", "[0, 19]"),
        (
            ("threshold_ratio = 0.7", "threshold_ratio = 1.5"),
            "sae.tied.aux.threshold_ratio",
            "(0, 1]",
        ),
        (("latents = 5", 'latents = "five"'), "sae.tied.latents", "integer"),
        (
            ("firing = { linear = [0.015, 0.3] }", "firing = [0.1, 0.2]"),
            "world.firing",
            "one value per feature",
        ),
        (("firing = { linear = [0.015, 0.3] }", "firing = 1.5"), "world.firing", "[0, 1]"),
    ],
)
def test_bad_values_name_the_field(tmp_path, edit, field, allowed):
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.replace(*edit))
    with pytest.raises(ConfigError) as err:
        load_toml(path)
    assert err.value.field == field
    assert allowed in str(err.value)


def test_cycle_in_hierarchy_rejected():
    with pytest.raises(ConfigError, match="cycle"):
        from_dict(
            ExperimentConfig,
            {
                "name": "x",
                "world": {
                    "features": 3,
                    "hierarchy": [{"parent": 0, "children": [1]}, {"parent": 1, "children": [0]}],
                },
            },
        )


def test_overrides_address_sae_by_label_index_and_star():
    config = ExperimentConfig(name="x", sae=[SAEConfig(label="a"), SAEConfig(label="b")])
    out = apply_overrides(
        config, ["train.lr=1e-3", "sae.b.l1=0.5", "sae.0.latents=7", "sae.*.activation=jumprelu"]
    )
    assert out.train.lr == 1e-3
    assert [s.l1 for s in out.sae] == [config.sae[0].l1, 0.5]
    assert [s.latents for s in out.sae] == [7, config.sae[1].latents]
    assert {s.activation for s in out.sae} == {"jumprelu"}
    with_aux = apply_overrides(config, ["sae.a.aux.coefficient=5.0"])
    assert with_aux.sae[0].aux.coefficient == 5.0 and with_aux.sae[1].aux is None


@pytest.mark.parametrize(
    "assignment, field",
    [
        ("train.lr", "--set"),
        ("sae.c.l1=1", "sae.c.l1"),
        ("train.lr=fast", "train.lr"),
        ("train.nope=1", "train.nope"),
    ],
)
def test_bad_overrides(assignment, field):
    with pytest.raises(ConfigError) as err:
        apply_overrides(ExperimentConfig(name="x"), [assignment])
    assert err.value.field == field


@given(st.floats(0, 1), st.floats(0, 1), st.integers(1, 50))
def test_linear_spec_spans_its_ends(start, stop, n):
    values = resolve_spec({"linear": [start, stop]}, n, "f")
    assert len(values) == n
    assert values[0] == pytest.approx(start)
    if n > 1:
        assert values[-1] == pytest.approx(stop)
        assert all(min(start, stop) - 1e-12 <= v <= max(start, stop) + 1e-12 for v in values)


def test_example_worlds_parse_and_match_the_readme():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    example = root / "examples" / "my-hierarchy.toml"
    config = load_toml(example)
    assert config.world.hierarchy[0].mode == "conditional"
    assert example.read_text() in (root / "docs" / "guides" / "worlds.md").read_text()
    nested = load_toml(root / "examples" / "matryoshka.toml")
    assert [s.matryoshka_widths for s in nested.sae] == [None, [1, 6], [1, 6]]


def test_every_config_field_has_a_docstring():
    """The README sends readers to the dataclasses' docstrings for every key's meaning: each field of
    each config table, and of each architecture's own Options, must carry one."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    from broken_latents.config import schema as config
    from broken_latents.saes import ARCHITECTURES

    tables = [
        config.WorldConfig,
        config.HierarchyConfig,
        config.TreeConfig,
        config.CorrelationConfig,
        config.TrainConfig,
        config.SAEConfig,
        config.AuxConfig,
        config.InverseConfig,
        config.ExperimentConfig,
        *(a.Options for a in ARCHITECTURES.values()),
    ]
    for table in tables:
        body = ast.parse(textwrap.dedent(inspect.getsource(table))).body[0].body
        documented = {
            field.target.id
            for field, doc in zip(body, body[1:])
            if isinstance(field, ast.AnnAssign)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        }
        missing = [f.name for f in dataclasses.fields(table) if f.name not in documented]
        assert not missing, f"{table.__qualname__}: no docstring for {missing}"
