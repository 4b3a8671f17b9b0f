"""The Python API: `load_run` gives back what a run trained (weights, math, world, typed metrics, history)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import broken_latents as bl
from broken_latents.cli import main
from broken_latents.saes import build_sae
from worlds import TINY

TOML = (
    TINY.replace('name = "tiny-world"', 'name = "api-world"')
    + """
[[sae]]
label = "untied-relu"
architecture = "untied"
latents = 5

[[sae]]
label = "tied-jump-aux"
architecture = "tied"
latents = 5
activation = "jumprelu"

[sae.aux]
coefficient = 100.0
window_batches = 5
delay_samples = 20_000
warmup_samples = 20_000
"""
)
SPARSE = (
    TINY[: TINY.index("[[sae]]")].replace('name = "tiny-world"', 'name = "api-sparse"')
    + """
[[sae]]
label = "topk"
architecture = "untied"
latents = 4
activation = "topk"
k = 1

[[sae]]
label = "batchtopk-nested"
architecture = "tied"
latents = 4
activation = "batchtopk"
k = 1
matryoshka_widths = [1, 4]
"""
)
LABELS = [
    "tied",
    "untied",
    "untied-relu",
    "tied-jump-aux",
]  # relu/jumprelu, tied/untied, learned/aux threshold


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """dense: tied/untied x relu/jumprelu (learned and aux thresholds); sparse: topk, and a
    Matryoshka batchtopk SAE (autograd-trained)."""
    root = tmp_path_factory.mktemp("api")
    dirs = {}
    for kind, text in (("dense", TOML), ("sparse", SPARSE)):
        (root / f"{kind}.toml").write_text(text)
        main(["run", str(root / f"{kind}.toml"), "--out", str(root / kind)])
        dirs[kind] = root / kind
    return dirs


@pytest.fixture(scope="module")
def runs(run_dirs):
    return [bl.load_run(path) for path in run_dirs.values()]


@pytest.fixture(scope="module")
def run(runs):
    return runs[0]


@pytest.mark.slow
def test_load_run_gives_config_world_saes_typed_metrics_and_history(runs):
    run, sparse = runs
    assert sparse.saes["batchtopk-nested"][0].widths == [1, 4] and sparse.saes["batchtopk-nested"][
        1
    ].threshold.shape == (4,)
    assert sparse.saes["topk"][0].config.k == 1 and sparse.saes["topk"][0].threshold is None
    assert isinstance(run.config, bl.api.ExperimentConfig) and run.config.name == "api-world"
    assert tuple(run.world.directions.shape) == (4, 8)
    assert isinstance(run.metrics, bl.Metrics) and len(run.metrics.runs) == 8
    assert list(run.saes) == LABELS and run.seeds == [0, 1]
    sae = run.saes["untied"][1]
    assert (sae.architecture, sae.activation, sae.latents) == ("untied", "jumprelu", 3)
    assert (
        tuple(sae.W_enc.shape) == (8, 3)
        and tuple(sae.W_dec.shape) == (3, 8)
        and tuple(sae.threshold.shape) == (3,)
    )
    assert run.saes["tied"][0].threshold is None
    assert [(r.label, r.seed) for r in run.history.runs] == [
        (label, s) for label in LABELS for s in (0, 1)
    ]


@pytest.mark.slow
def test_loaded_weights_and_directions_reproduce_the_decoder_cosines(runs):
    for run, entry in ((run, entry) for run in runs for entry in run.metrics.runs):
        W_dec = run.saes[entry.label][entry.seed].W_dec
        cos = (
            torch.nn.functional.normalize(W_dec, dim=1)
            @ torch.nn.functional.normalize(run.world.directions, dim=1).T
        )
        np.testing.assert_allclose(
            cos.numpy(), np.array(entry.decoder_cos), atol=1e-4, err_msg=entry.label
        )


@pytest.mark.slow
def test_encode_reproduces_the_trained_activations(runs):
    """metrics.json's firing patterns are the trained SAEs' activations on exact feature sets."""
    checked = 0
    for run, entry in ((run, entry) for run in runs for entry in run.metrics.runs):
        sae = run.saes[entry.label][entry.seed]
        for pattern in entry.firing_patterns:
            f_N = torch.zeros(run.config.world.features)
            f_N[pattern.features] = run.world.magnitudes_N[pattern.features]
            h = sae.encode(f_N @ run.world.directions)
            np.testing.assert_allclose(
                h.numpy(), pattern.activations, atol=2e-4, err_msg=f"{entry.label} {pattern}"
            )
            checked += 1
    assert checked >= 16


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 1])
def test_encode_and_decode_match_the_stacked_sae_on_world_inputs(runs, which):
    run = runs[which]
    f_BN = torch.tensor(run.world.sample(np.random.default_rng(1), 512)).T
    x_BD = f_BN @ run.world.directions
    for sae_config in run.config.sae:
        seeds = sorted(run.saes[sae_config.label])
        stacked = build_sae(sae_config, len(seeds), run.config.world.dim, seeds, "random")
        loaded = [run.saes[sae_config.label][s] for s in seeds]
        tau_SK = None
        with torch.no_grad():
            stacked.W_dec_SKD.copy_(torch.stack([s.W_dec for s in loaded]))
            stacked.b_dec_SD.copy_(torch.stack([s.b_dec for s in loaded]))
            if sae_config.architecture == "untied":
                stacked.W_enc_SDK.copy_(torch.stack([s.W_enc for s in loaded]))
                stacked.b_enc_SK.copy_(torch.stack([s.b_enc for s in loaded]))
            if sae_config.activation == "batchtopk":
                stacked.batchtopk_threshold_S.copy_(torch.stack([s.threshold[0] for s in loaded]))
            if sae_config.activation == "jumprelu":
                thresholds = torch.stack([s.threshold for s in loaded])
                if stacked.log_threshold_SK is not None:
                    stacked.log_threshold_SK.copy_(thresholds.log())
                else:
                    tau_SK = thresholds
            h_SBK, x_hat_SBD = stacked(x_BD.expand(len(seeds), -1, -1), tau_SK)
        for i, sae in enumerate(loaded):
            h, x_hat = sae(x_BD)
            assert (h > 0).any(), sae_config.label
            torch.testing.assert_close(h, h_SBK[i], rtol=1e-5, atol=1e-5, msg=sae_config.label)
            torch.testing.assert_close(
                x_hat, x_hat_SBD[i], rtol=1e-5, atol=1e-5, msg=sae_config.label
            )
            width = 2
            torch.testing.assert_close(
                sae.decode(h, width=width), h[:, :width] @ sae.W_dec[:width] + sae.b_dec
            )


@pytest.mark.slow
def test_the_saelens_folders_encode_as_the_loaded_saes(runs):
    """Every run also writes weights/LABEL-seedN/ for SAELens (topk as topk, batchtopk as its JumpReLU)."""
    from broken_latents.output.saelens_format import load_sae

    for run in runs:
        x_BD = (
            torch.tensor(run.world.sample(np.random.default_rng(2), 256)).T @ run.world.directions
        )
        for label, by_seed in run.saes.items():
            for seed, sae in by_seed.items():
                saelens = load_sae(run.path / "weights" / f"{label}-seed{seed}")
                np.testing.assert_allclose(
                    saelens.encode(x_BD.numpy()), sae.encode(x_BD).numpy(), atol=1e-5, err_msg=label
                )


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda p: p / "missing", "is not a directory"),
        (lambda p: p, "no metrics.json"),
    ],
)
def test_a_bad_directory_raises_a_config_error_naming_it(tmp_path, make, says):
    path = make(tmp_path)
    with pytest.raises(bl.ConfigError) as err:
        bl.load_run(path)
    assert str(path) in str(err.value) and says in str(err.value) and err.value.field == "DIR"


@pytest.mark.slow
def test_a_run_without_its_weights_raises_a_config_error(run_dirs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dirs["sparse"], copy)
    label = "batchtopk-nested"
    for f in (copy / "weights").glob(f"{label}-seed*.safetensors"):
        f.unlink()
    with pytest.raises(bl.ConfigError, match=f"{label}-seedN"):
        bl.load_run(copy)


@pytest.mark.slow
def test_train_and_analyse_in_memory_with_the_experiments_claims():
    result = bl.train("recap-absorption", seeds=1, samples=20_000, set=["train.eval_samples=2000"])
    metrics = bl.analyse(result)
    assert isinstance(metrics, bl.Metrics) and metrics.name == "recap-absorption"
    assert [c.id for c in metrics.claims] == [
        c.id for c in bl.experiments.EXPERIMENTS["recap-absorption"].claims
    ]
    assert metrics.runs[0].absorption is not None and len(metrics.runs[0].hedging) == 4
    assert (
        result.config.train.samples == 20_000
        and bl.experiments.EXPERIMENTS["recap-absorption"].config.train.samples > 20_000
    )
    with pytest.raises(bl.ConfigError, match="TARGET"):
        bl.load_config("no-such-experiment")


@pytest.mark.slow
def test_run_writes_the_directory_and_loads_it_back(tmp_path):
    loaded = bl.run(
        "recap-absorption",
        tmp_path / "recap",
        seeds=1,
        samples=20_000,
        set=["train.eval_samples=2000"],
    )
    assert (tmp_path / "recap" / "metrics.json").is_file() and (
        tmp_path / "recap" / "history.json"
    ).is_file()
    assert loaded.config.train.samples == 20_000 and list(loaded.saes) == ["untied", "tied"]
    assert [c.id for c in loaded.metrics.claims] == ["untied-absorbs", "tied-clean"]


def test_importing_the_package_loads_neither_torch_nor_numba():
    code = "import sys, broken_latents as bl; bl.experiments; print('torch' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1] == "False"
    out = subprocess.run(
        [sys.executable, "-c", code.replace("bl.experiments; ", "")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.slow
def test_world_draw_gives_inputs_and_features_from_the_training_distribution(run):
    world = run.world
    x = world.draw(20_000, seed=3)
    x_again, f = world.draw(20_000, seed=3, features=True)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert x.shape == (20_000, world.config.dim) and f.shape == (20_000, world.config.features)
    assert torch.equal(x, x_again) and not torch.equal(x, world.draw(20_000, seed=4))
    assert torch.allclose(x, f @ world.directions, atol=1e-5)
    fired = (
        (f > 0).float().mean(0)
    )  # the hierarchy included: the marginal rates, within sampling error
    assert torch.allclose(fired, world.marginal_rates(), atol=4 * (0.25 / 20_000) ** 0.5)
    assert torch.allclose(f[f > 0], world.magnitudes_N.expand_as(f)[f > 0])
    with pytest.raises(ValueError, match="n must be"):
        world.draw(0)


@pytest.mark.slow
def test_runs_saes_and_worlds_print_in_one_short_line(run):
    sae = run.saes["tied"][0]
    for obj, says in (
        (run, ["Run(", "tied", ".saes[label][seed]"]),
        (run.world, ["World(", "features in"]),
        (sae, ["SAE('tied' seed 0", "latents"]),
    ):
        text = repr(obj)
        # the run's own path is as long as the caller made it
        short = text.replace(str(run.path), "")
        assert "\n" not in text and len(short) < 200 and all(s in text for s in says), text


def test_export_world_reads_back_as_the_same_world_and_refuses_force(tmp_path):
    from broken_latents.config.schema import TreeConfig, WorldConfig
    from broken_latents.world.model import World

    config = WorldConfig(
        features=24,
        dim=8,
        firing={"zipf": {"exponent": 0.5, "max": 0.4, "min": 0.01}},
        tree=TreeConfig(roots=2, branching=2, depth=2, mutually_exclusive=1.0),
        bias=0.5,
    )
    world = World.build(config)
    again = World.build(WorldConfig(load=str(bl.export_world(world, tmp_path / "w"))))
    assert torch.equal(again.rates_N, world.rates_N)
    assert torch.equal(again.directions_ND, world.directions_ND)
    assert np.array_equal(again.structure.parent_N, world.structure.parent_N)
    with pytest.raises(ValueError, match="force"):
        bl.export_world(
            "recap-absorption", tmp_path / "recap"
        )  # a registered name, with force relations
