"""Known answers for SynthSAEBench's metrics (analysis/scale.py) on hand-built SAEs, and the
metrics of a tiny trained run when the held-out samples are streamed."""

import numpy as np
import pytest
import torch

import broken_latents as bl
from broken_latents.analysis import measure as measure_module
from broken_latents.analysis.scale import (
    FiringTally,
    decoder_scores,
    hierarchy_edges,
    parent_latents,
)
from broken_latents.config.schema import HierarchyConfig, WorldConfig
from broken_latents.world.model import World
from worlds import TINY


def _cos(W_KD: np.ndarray, F_ND: np.ndarray) -> np.ndarray:
    W = W_KD / np.linalg.norm(W_KD, axis=1, keepdims=True).clip(1e-8)
    F = F_ND / np.linalg.norm(F_ND, axis=1, keepdims=True)
    return W @ F.T


def _scores(W_KD, F_ND, h_BK, f_BN, x_hat_BD=None, edges=(), batches=1):
    """Every metric of an SAE with decoder W_KD and activations h_BK on inputs x = f F, the samples
    fed to the tally in `batches` pieces."""
    cos = _cos(np.asarray(W_KD, float), np.asarray(F_ND, float))
    decoder = decoder_scores(cos)
    edges = list(edges)
    tally = FiringTally(decoder.best_feature_K, edges, parent_latents(cos, edges))
    f = torch.as_tensor(np.asarray(f_BN, np.float32))
    x = f @ torch.as_tensor(np.asarray(F_ND, np.float32))
    x_hat = x if x_hat_BD is None else torch.as_tensor(np.asarray(x_hat_BD, np.float32))
    h = torch.as_tensor(np.asarray(h_BK, np.float32))
    for part in np.array_split(np.arange(len(f)), batches):
        tally.add(h[part], f[part], x[part], x_hat[part])
    return {"mcc": decoder.mcc, "uniqueness": decoder.uniqueness, **tally.scores()}


def _world_samples(n_features=6, samples=400, seed=0):
    rng = np.random.default_rng(seed)
    F_ND = np.linalg.qr(rng.normal(size=(12, n_features)))[0].T  # orthonormal rows
    fires = rng.random((samples, n_features)) < 0.3
    f_BN = fires * rng.uniform(0.5, 2.0, (samples, n_features))
    return F_ND, f_BN


def test_perfect_sae_scores_one_everywhere():
    F_ND, f_BN = _world_samples()
    s = _scores(F_ND, F_ND, f_BN, f_BN)
    for key in (
        "mcc",
        "uniqueness",
        "precision",
        "recall",
        "f1",
        "shrinkage",
        "explained_variance",
    ):
        assert s[key] == pytest.approx(1.0, abs=1e-6), key
    assert s["sae_l0"] == s["true_l0"] == pytest.approx((f_BN > 0).sum() / len(f_BN))
    assert s["dead_count"] == 0


def test_permuted_sae_is_still_perfect():
    F_ND, f_BN = _world_samples()
    perm = np.array([3, 0, 5, 1, 4, 2])
    s = _scores(
        -F_ND[perm] * 2.5, F_ND, f_BN[:, perm], f_BN
    )  # sign and norm of a row do not matter
    assert (
        s["mcc"] == pytest.approx(1.0) and s["uniqueness"] == 1.0 and s["f1"] == pytest.approx(1.0)
    )


def test_duplicated_latents_halve_uniqueness_and_mcc():
    # Two latents on feature 0 of two orthogonal features: Hungarian pairs the second with feature 1
    # at |cos| 0, so MCC is (1 + 0) / 2; both latents' best feature is 0, so uniqueness 1/2.
    F_ND = np.eye(2)
    f_BN = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    s = _scores(np.array([[1.0, 0.0], [1.0, 0.0]]), F_ND, f_BN[:, [0, 0]], f_BN)
    assert s["mcc"] == pytest.approx(0.5) and s["uniqueness"] == 0.5
    assert s["f1"] == pytest.approx(1.0)  # each latent detects feature 0 exactly


def test_precision_recall_f1_count_each_latent_against_its_best_feature():
    # Feature 0 fires on samples 0-3; latent 0 on 0, 1, 4, 5: TP 2, FP 2, FN 2.
    # Latent 1 (on feature 1, which fires on 6, 7) fires on 6 only: precision 1, recall 1/2, F1 2/3.
    F_ND = np.eye(2)
    f_BN = np.zeros((8, 2))
    f_BN[0:4, 0] = 1.0
    f_BN[6:8, 1] = 1.0
    h_BK = np.zeros((8, 2))
    h_BK[[0, 1, 4, 5], 0] = 1.0
    h_BK[6, 1] = 1.0
    s = _scores(F_ND, F_ND, h_BK, f_BN)
    assert s["precision"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["recall"] == pytest.approx((0.5 + 0.5) / 2)
    assert s["f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert s["sae_l0"] == pytest.approx(5 / 8) and s["true_l0"] == pytest.approx(6 / 8)


def test_a_silent_latent_is_dead_and_scores_zero():
    F_ND, f_BN = _world_samples(n_features=2)
    h_BK = np.stack([f_BN[:, 0], np.zeros(len(f_BN))], axis=1)
    s = _scores(F_ND, F_ND, h_BK, f_BN)
    assert s["dead_count"] == 1
    assert s["f1"] == pytest.approx(0.5)  # latent 0 perfect, latent 1 F1 0


def test_shrinkage_and_explained_variance_of_a_half_reconstruction():
    # x = +-e0 with equal counts: mean 0, variance 1; x_hat = x / 2: shrinkage 1/2, MSE 1/4.
    F_ND = np.eye(2)
    f_BN = np.array([[1.0, 0.0], [0.0, 1.0]] * 5)
    x_BD = f_BN @ F_ND
    x_BD[1::2] = -x_BD[0::2]  # +e0, -e0, ...
    f_BN = np.abs(x_BD)
    tally = FiringTally(np.array([0, 1]), [], np.zeros(0))
    tally.add(*(torch.tensor(a, dtype=torch.float32) for a in (f_BN, f_BN, x_BD, x_BD / 2)))
    s = tally.scores()
    assert s["shrinkage"] == pytest.approx(0.5)
    assert s["explained_variance"] == pytest.approx(0.75)


def test_absorption_gap_of_a_parent_latent_absorbed_by_its_child():
    # Parent 0, child 1 (child fires only with the parent). The parent latent fires on all 4
    # inputs with the parent alone and on 1 of the 4 with the child too: gap 1 - 1/4.
    F_ND = np.eye(3)
    f_BN = np.array([[1, 0, 0]] * 4 + [[1, 1, 0]] * 4 + [[0, 0, 1]] * 2, dtype=float)
    h_BK = np.zeros((10, 3))
    h_BK[:5, 1] = 1.0  # latent 1 points along the parent (below)
    h_BK[4:8, 0] = 1.0
    W_KD = np.array([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    s = _scores(W_KD, F_ND, h_BK, f_BN, edges=[(0, 1)])
    assert s["absorption_gap"] == [
        {"parent": 0, "child": 1, "gap": pytest.approx(0.75), "latent": 1}
    ]


def test_absorption_gap_is_none_when_the_child_never_fires():
    F_ND = np.eye(2)
    f_BN = np.array([[1.0, 0.0]] * 3)
    s = _scores(F_ND, F_ND, f_BN, f_BN, edges=[(0, 1)])
    assert s["absorption_gap"][0]["gap"] is None


def test_streaming_in_batches_gives_the_one_shot_values():
    F_ND, f_BN = _world_samples(samples=300)
    rng = np.random.default_rng(1)
    h_BK = f_BN * (rng.random(f_BN.shape) < 0.7) + (rng.random(f_BN.shape) < 0.05)
    x_hat = 0.8 * (f_BN @ F_ND) + 0.01
    one = _scores(F_ND + 0.1, F_ND, h_BK, f_BN, x_hat, edges=[(0, 1), (0, 2)])
    many = _scores(F_ND + 0.1, F_ND, h_BK, f_BN, x_hat, edges=[(0, 1), (0, 2)], batches=7)
    for key, value in one.items():
        if key == "absorption_gap":
            assert [g["gap"] for g in many[key]] == pytest.approx([g["gap"] for g in value])
        else:
            assert many[key] == pytest.approx(value, rel=1e-9), key


def test_hierarchy_edges_list_every_parent_child_pair_top_down():
    world = World.build(
        WorldConfig(
            features=5,
            dim=5,
            hierarchy=[
                HierarchyConfig(parent=1, children=[3, 4]),
                HierarchyConfig(parent=0, children=[1]),
            ],
        )
    )
    assert hierarchy_edges(world) == [(0, 1), (1, 3), (1, 4)]


def test_streamed_metrics_of_a_trained_run_match_the_world(tmp_path, monkeypatch):
    # A detail budget of one sample forces the streamed path; the true L0 over 5000 held-out
    # samples must then agree with the world's exact marginal rates (their sum).
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY)
    result = bl.train(str(config_path), seeds=1, samples=20_000)
    monkeypatch.setattr(measure_module, "DETAIL_BYTES", 1)
    monkeypatch.setattr(
        measure_module, "STREAM_BYTES", 4 * 4 * 700
    )  # batches of 700: the last is short
    monkeypatch.setattr(
        measure_module, "FIRING_PATTERNS_MAX", 2
    )  # both SAEs (4 and 3 latents) are "large" here
    monkeypatch.setattr(measure_module, "PEAK_MODELS_MAX", 1)
    metrics = measure_module.measure(result)
    assert [run.firing_patterns for run in metrics.runs] == [[], []]
    for run in metrics.runs:  # one peak model: the latent that fires most
        assert len(run.peak_models) == min(1, len(run.decoder_cos) - len(run.dead_latents))
    expected_l0 = float(result.world.marginal_rates().sum())
    for run in metrics.runs:
        assert run.true_l0 == pytest.approx(expected_l0, abs=0.05)
        assert 0 <= run.f1 <= 1 and 0 < run.mcc <= 1 and run.dead_count <= len(run.decoder_cos)
        assert [(g.parent, g.child) for g in run.absorption_gap] == [(0, 1)]
    assert all(run.sae_l0 == pytest.approx(run.l0, abs=0.1) for run in metrics.runs)


def test_hierarchy_edges_include_a_generated_tree_without_its_organisational_nodes():
    from types import SimpleNamespace as Node

    leaf = lambda f: Node(feature=f, children=[])  # noqa: E731
    roots = [
        Node(feature=None, children=[Node(feature=0, children=[leaf(1), leaf(2)])]),
        Node(feature=3, children=[Node(feature=4, children=[leaf(5)])]),
    ]
    world = Node(top_down=lambda: [], tree_roots=roots)
    assert hierarchy_edges(world) == [(3, 4), (0, 1), (0, 2), (4, 5)]
