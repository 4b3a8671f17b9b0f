"""SAEs trained on an activations file drawn from a known world learn its directions."""

import numpy as np
import pytest
import torch

from broken_latents.analysis.on_activations import (
    Truth,
    measure_on_activations,
    truth_from_config,
)
from broken_latents.config.schema import (
    ConfigError,
    ExperimentConfig,
    HierarchyConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.language.probes import edges_from_labels
from broken_latents.output.describe import world_line
from broken_latents.pipeline.resolve import check_trainable
from broken_latents.training.on_activations import train_on_activations
from broken_latents.world.activations import ActivationFile, StoredActivations
from broken_latents.world.model import World

WORLD = WorldConfig(
    features=6, dim=12, firing=0.15, magnitude=[3.0, 2.0, 2.0, 1.5, 1.5, 1.0], seed=4
)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """40k rows of the world written to .npy, with its firings as labels."""
    world = World.build(WORLD)
    f_NB = world.sample(np.random.default_rng(0), 40_000)
    x = (f_NB.T @ world.directions_ND.numpy()).astype(np.float32)
    path = tmp_path_factory.mktemp("acts") / "x.npy"
    np.save(path, x)
    return path, f_NB.T > 0, world.directions_ND.numpy()


def config(*saes, samples=600_000, path="unused.npy") -> ExperimentConfig:
    return ExperimentConfig(
        name="stored",
        world=WorldConfig(activations=str(path), held_out=0.2),
        train=TrainConfig(samples=samples, batch_size=512, lr=1e-2, seeds=1),
        sae=list(saes),
    )


def test_saes_learn_every_direction(stored):
    path, labels, directions = stored
    saes = [
        SAEConfig(label=arch, architecture=arch, latents=6, l1=0.1) for arch in ("untied", "tied")
    ]
    result = train_on_activations(
        config(*saes), progress=False, stored=StoredActivations(ActivationFile.open(path), 0.2)
    )
    truth = Truth(directions, list(range(6)), labels, edges_from_labels(labels))
    metrics = measure_on_activations(result, truth)
    untied, tied = metrics.runs
    assert world_line(metrics.world).startswith("world: stored activations")
    assert "6 concepts kept" in world_line(metrics.world)
    for run in (untied, tied):
        best = np.abs(np.array(run.decoder_cos)).max(axis=0)
        assert (best >= 0.95).all(), (run.label, best)
        assert run.explained_variance > 0.95 and run.dead_latents == []
    # Independent features: nothing to absorb, and the tied latents fire exactly with their features.
    assert tied.absorption_gap == [] and max(tied.absorption) < 0.01
    assert tied.mcc > 0.99 and tied.f1 > 0.95  # SynthSAEBench's scores on the same truth
    assert min(tied.extra["firing_f1"]) > 0.99 and not any(tied.truth_broken)


def test_absorption_matches_a_plain_recomputation(stored):
    """From the file, the SAE's weights and the directions metrics.json records: the absorption fraction
    by its definition (positive contributions, share carried by latents other than the match)."""
    path, labels, _ = stored
    sae = SAEConfig(label="topk", architecture="untied", latents=5, activation="topk", k=1, l1=0.0)
    result = train_on_activations(
        config(sae, samples=100_000),
        progress=False,
        stored=StoredActivations(ActivationFile.open(path), 0.2),
    )
    np.save(path.parent / "labels.npy", labels)
    world = WorldConfig(activations=str(path), labels=str(path.parent / "labels.npy"), held_out=0.2)
    truth = truth_from_config(world, result.source, result.train_rows)
    metrics = measure_on_activations(result, truth)
    (run,) = metrics.runs
    start, stop = metrics.world.extra["eval_range"]
    F = np.array(metrics.world.extra["directions"])
    x = np.load(path)[start:stop].astype(np.float64)
    weights = result.stacks[0].sae.saelens_state(0)
    W_enc, W_dec, b_enc, b_dec = (
        weights[k].double().numpy() for k in ("W_enc", "W_dec", "b_enc", "b_dec")
    )
    pre = (x - b_dec) @ W_enc + b_enc
    h = np.where(pre >= np.sort(pre, axis=1)[:, -1:], np.maximum(pre, 0), 0.0)  # TopK, k = 1
    matched = {m.feature: m.latent for m in run.matches}
    for i in range(F.shape[0]):
        active = labels[start:stop, i]
        c = h[active] * (W_dec @ F[i])
        c = np.where(c > 1e-6, c, 0.0)
        total = c.sum(1)
        others = total - (c[:, matched[i]] if i in matched else 0.0)
        share = np.divide(others, total, out=np.zeros_like(total), where=total > 0)
        assert share.mean() == pytest.approx(run.absorption[i], abs=2e-4)


def test_without_truth_only_what_needs_none(stored):
    path, _, _ = stored
    result = train_on_activations(
        config(
            SAEConfig(
                label="topk", architecture="untied", latents=6, activation="topk", k=2, l1=0.0
            ),
            samples=50_000,
            path=path,
        ),
        progress=False,
    )
    (run,) = measure_on_activations(result).runs
    assert run.decoder_cos == [] and run.absorption is None and run.truth_broken is None
    assert len(run.broken_score) == 6 and all(0 <= p <= 1 for p in run.broken_score)
    assert run.l0 == pytest.approx(2.0, abs=0.01) and 0 < run.explained_variance < 1


def test_hierarchy_read_from_the_labels():
    hierarchy = [
        HierarchyConfig(parent=0, children=[1, 2], mode="conditional"),
        HierarchyConfig(parent=2, children=[3]),
    ]
    world = World.build(WorldConfig(features=5, dim=5, firing=0.3, hierarchy=hierarchy))
    labels = world.sample(np.random.default_rng(0), 20_000).T > 0
    # 3 forces 2 on after 2's condition on 0 is applied, so 2 fires without 0 and only 1 is 0's child.
    assert sorted(edges_from_labels(labels)) == [(0, 1), (2, 3)]


@pytest.mark.slow
def test_inverse_technique_cleans_a_merged_latent_on_stored_rows(tmp_path):
    """The post's single-latent world written to a file: one tied latent merges the parent with its
    children (cos 0.80 with the parent); with the inverse technique (its peak directions refitted on
    training rows) the seed along +parent becomes the clean parent, as in the world itself."""
    from broken_latents.config.schema import InverseConfig
    from broken_latents.experiments.post import single_latent_world

    world = World.build(single_latent_world())
    f_NB = world.sample(np.random.default_rng(0), 40_000)
    np.save(tmp_path / "single.npy", (f_NB.T @ world.directions_ND.numpy()).astype(np.float32))
    inverse = InverseConfig(
        coefficient=10.0, refit_samples=50_000, delay_samples=100_000, warmup_samples=100_000
    )
    cos_with_parent = {}
    for technique in (None, inverse):
        sae = SAEConfig(label="tied", architecture="tied", latents=1, inverse=technique)
        cfg = config(sae, samples=600_000, path=tmp_path / "single.npy")
        cfg.train.batch_size, cfg.train.lr = 512, 3e-3
        W_D = train_on_activations(cfg, progress=False).stacks[0].sae.W_dec_SKD[0, 0].detach()
        cos_with_parent[technique is not None] = float(W_D @ world.directions_ND[0] / W_D.norm())
    assert 0.7 < cos_with_parent[False] < 0.9  # the merged latent: parent + children
    assert cos_with_parent[True] > 0.95


@pytest.mark.slow
def test_cli_runs_a_stored_world_and_refuses_bad_files(stored, tmp_path):
    """End to end through the pipeline: labels give the truth; a bad file is one line from the CLI, exit 2."""
    import subprocess
    import sys

    path, labels, _ = stored
    np.save(tmp_path / "labels.npy", labels)
    toml = tmp_path / "stored.toml"
    body = f"""name = "stored"
[world]
activations = "{path}"
labels = "{tmp_path / "labels.npy"}"
[train]
samples = 300_000
batch_size = 512
lr = 1e-2
seeds = 1
[[sae]]
label = "tied"
architecture = "tied"
latents = 6
l1 = 0.1
"""
    toml.write_text(body)
    from broken_latents.pipeline.resolve import resolve_target
    from broken_latents.pipeline.run import run_experiment

    (run,) = run_experiment(resolve_target(toml), tmp_path / "run", progress=False).metrics.runs
    assert (
        len(run.learned_features) == 6
    )  # the difference of class means is each feature's direction here
    assert (tmp_path / "run" / "figures" / "tied-seed0-decoder.png").exists()
    cli = [sys.executable, "-m", "broken_latents.cli", "run"]
    np.save(tmp_path / "bad.npy", np.zeros((10, 3, 2), np.float32))
    toml.write_text(body.replace(str(path), str(tmp_path / "bad.npy")))
    done = subprocess.run(
        cli + [str(toml), "--out", str(tmp_path / "bad")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "world.activations" in done.stderr
    assert not (tmp_path / "bad").exists()


def test_one_loop_and_engine_for_worlds_and_stored_rows(stored):
    """Stored rows train through the world loop (`run_training`) and its engines: the hand-derived
    gradients ("arrays", the D input axes as feature space) and "auto" (the sparse-latent gradients of
    large worlds) give autograd's weights to float rounding."""
    from broken_latents.training import loop

    path, _, _ = stored
    saes = [
        SAEConfig(label="untied", architecture="untied", latents=6, l1=0.1),
        SAEConfig(label="tied", architecture="tied", latents=6, l1=0.1),
    ]
    weights, calls = {}, []
    real = loop.run_training

    def spy(*args, **kwargs):
        calls.append(args[3].name)  # the engine class
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("broken_latents.training.on_activations.run_training", spy)
        for engine in ("autograd", "arrays", "auto"):
            cfg = config(*saes, samples=20_000, path=path)
            cfg.train.engine = engine
            result = train_on_activations(cfg, progress=False)
            weights[engine] = [s.sae.W_dec_SKD.detach().clone() for s in result.stacks]
    assert calls == ["autograd", "arrays", "sparse-latents-compiled"]
    assert result.samples == 20_480 and len(result.train_rows) == 32_000
    for other in ("arrays", "auto"):
        for a, b in zip(weights["autograd"], weights[other]):
            assert (a - b).abs().max() < 1e-5


def test_compiled_engine_refused_on_stored_rows(stored):
    path, _, _ = stored
    cfg = config(SAEConfig(label="tied", architecture="tied", latents=2), path=path)
    cfg.train.engine = "compiled"
    with pytest.raises(
        ConfigError, match="train.engine: 'compiled' works on a world's feature firings"
    ):
        check_trainable(cfg)


def test_arrays_refused_on_stored_rows_where_an_sae_has_no_hand_gradients(stored):
    """One `choose_engine` serves sampled worlds and stored rows: "arrays" without hand gradients is refused
    with the same message on both, and "auto" on stored rows is the sparse-latent engine."""
    path, _, _ = stored
    cfg = config(
        SAEConfig(label="soft", architecture="tied", latents=2, activation="topk", k=1), path=path
    )
    cfg.train.engine = "arrays"
    with pytest.raises(
        ConfigError, match=r"'arrays' needs hand-derived gradients, and SAE\(s\) \['soft'\]"
    ):
        check_trainable(cfg)
    cfg.train.engine = "auto"
    assert check_trainable(cfg).dim == 12


def test_the_python_api_trains_and_analyses_stored_rows(stored):
    """`bl.train` on a stored-activations config trains on the file's rows (not a default world), and
    `bl.analyse` measures them as a run does."""
    import broken_latents as bl

    path, _, _ = stored
    cfg = config(
        SAEConfig(label="tied", architecture="tied", latents=6, l1=0.1), samples=20_000, path=path
    )
    result = bl.train(cfg)
    assert result.stacks[0].sae.W_dec_SKD.shape[-1] == 12 and len(result.train_rows) == 32_000
    metrics = bl.analyse(result)
    assert metrics.world.extra["activations"] == str(path) and metrics.world.dim == 12
    assert [run.label for run in metrics.runs] == ["tied"]


def test_divergence_names_the_sae_and_seed_exits_2_and_writes_nothing(stored, tmp_path, capsys):
    """NaN/inf in training on stored rows: the CLI's one-line message (the SAE, its seed, what to lower),
    exit 2, and no run directory, not even a partial one."""
    from broken_latents.cli import main

    path, _, _ = stored
    toml = tmp_path / "diverge.toml"
    toml.write_text(
        f"""name = "diverge"
[world]
activations = "{path}"
[train]
samples = 4096
batch_size = 512
lr = 1e30
seeds = 2
first_seed = 3
[[sae]]
label = "wild"
architecture = "untied"
latents = 4
"""
    )
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", str(toml), "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "SAE 'wild' (seed 3)" in err and "NaN/inf" in err and "train.lr" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.slow
def test_a_world_never_seen_here_reports_learned_directions(tmp_path, capsys):
    """An arbitrary [N, D] file and a directions file, from a world drawn here with plain numpy (not
    world/): the run reports every direction's best |cos| and whether it was learned, in metrics.json
    and in `show`."""
    import json

    from broken_latents.cli import main

    rng = np.random.default_rng(2026)
    C, D, N = 7, 32, 30_000
    directions = rng.standard_normal((C, D))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    magnitudes = (rng.random((N, C)) < 0.12) * rng.uniform(0.5, 2.0, (N, C))
    x = magnitudes @ directions + 0.01 * rng.standard_normal((N, D)) + rng.standard_normal(D)
    np.save(tmp_path / "acts.npy", x.astype(np.float16))  # float16 rows, as a large dump may be
    np.save(tmp_path / "dirs.npy", directions * rng.uniform(0.5, 3.0, (C, 1)))  # any length
    (tmp_path / "hidden.toml").write_text(
        f"""name = "hidden"
[world]
activations = "{tmp_path / "acts.npy"}"
directions = "{tmp_path / "dirs.npy"}"
[train]
samples = 300_000
batch_size = 512
lr = 1e-2
seeds = 1
[[sae]]
label = "untied"
architecture = "untied"
latents = {C}
l1 = 0.05
"""
    )
    main(["run", str(tmp_path / "hidden.toml"), "--out", str(tmp_path / "run")])
    (run,) = json.loads((tmp_path / "run" / "metrics.json").read_text())["runs"]
    records = run["per_direction"]
    assert [r["direction"] for r in records] == list(range(C))
    W = np.array(run["decoder_cos"])  # [latents, directions]
    for r in records:
        assert r["best_cos"] == pytest.approx(np.abs(W[:, r["direction"]]).max(), abs=1e-4)
        assert r["learned"] == (r["direction"] in run["learned_features"])
    assert sum(r["learned"] for r in records) == C and min(r["best_cos"] for r in records) > 0.95
    capsys.readouterr()
    main(["show", str(tmp_path / "run")])
    shown = capsys.readouterr().out
    assert "best |cos|" in shown and f"{C}/{C}" in shown and "d6 " in shown


def test_mixture_thresholds_refit_on_stored_rows(stored, monkeypatch):
    """The aux loss's mixture thresholds refit on a second shuffled stream of training rows (the world
    loop's probe), where the former hand loop had no probe and stopped with a traceback."""
    from broken_latents.config.schema import AuxConfig
    from broken_latents.training import refit

    path, _, _ = stored
    aux = AuxConfig(
        coefficient=10.0,
        delay_samples=5_000,
        warmup_samples=5_000,
        threshold="mixture",
        refit_samples=10_000,
        refit_inputs=1024,
    )
    seen = []
    real = refit.Probe.__call__

    def spy(self, sae):
        x_SBD, h = real(self, sae)
        seen.append(x_SBD)
        return x_SBD, h

    monkeypatch.setattr(refit.Probe, "__call__", spy)
    cfg = config(
        SAEConfig(label="tied", architecture="tied", latents=6, l1=0.1, aux=aux),
        samples=30_000,
        path=path,
    )
    result = train_on_activations(cfg, progress=False)
    assert len(seen) >= 2 and seen[0].shape == (1, 1024, 12)
    x = np.load(path)
    train = {row.tobytes() for row in x[: len(result.train_rows)]}
    held_out = {row.tobytes() for row in x[len(result.train_rows) :]} - train
    probe_rows = [row.tobytes() for row in seen[0][0].numpy()]
    # the probe's inputs are training rows, never held-out ones
    assert all(r in train for r in probe_rows) and not any(r in held_out for r in probe_rows)
    assert torch.isfinite(result.stacks[0].tau_SK).all()
