"""What a run on stored activations reports, recomputed from the files alone: the activations, labels and
directions it read, the weights it wrote (DIR/weights/) and metrics.json, by the definitions written out
here in plain numpy (not the package's code)."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from scipy.optimize import linear_sum_assignment

from broken_latents.analysis.score import load_score_model
from broken_latents.pipeline.resolve import resolve_target
from broken_latents.pipeline.run import run_experiment

HIERARCHY = {
    0: [1, 2],
    3: [4, 5],
}  # parent -> children, as the language world's topics -> subtopics


@pytest.fixture(scope="module")
def language_style_run(tmp_path_factory):
    """A concept hierarchy written as a language world's files are (activations, labels, directions),
    and a run of an untied ReLU and a TopK SAE on it (the pipeline `run` goes through, figures left out)."""
    root = tmp_path_factory.mktemp("recompute")
    rng = np.random.default_rng(5)
    C, D, N = 6, 12, 20_000
    directions = rng.standard_normal((C, D))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    active = np.zeros((N, C), dtype=bool)
    for parent, children in HIERARCHY.items():
        active[:, parent] = rng.random(N) < 0.3
        child = rng.integers(0, len(children), N)  # siblings exclude each other
        for i, c in enumerate(children):
            active[:, c] = active[:, parent] & (child == i) & (rng.random(N) < 0.6)
    magnitudes = active * rng.uniform(0.8, 1.6, (N, C))
    x = (
        magnitudes @ directions + 0.02 * rng.standard_normal((N, D)) + 1.0
    )  # off the origin, as a residual
    np.save(root / "x.npy", x.astype(np.float32))
    np.save(root / "labels.npy", active)
    np.save(root / "directions.npy", directions.astype(np.float32))
    (root / "run.toml").write_text(
        f"""name = "recompute"
[world]
activations = "{root / "x.npy"}"
labels = "{root / "labels.npy"}"
directions = "{root / "directions.npy"}"
held_out = 0.2
[train]
samples = 100_000
batch_size = 512
lr = 1e-2
seeds = 1
[[sae]]
label = "untied"
architecture = "untied"
latents = 8
l1 = 0.05
[[sae]]
label = "topk"
architecture = "untied"
latents = 8
activation = "topk"
k = 2
l1 = 0.0
"""
    )
    run_experiment(resolve_target(root / "run.toml"), root / "run", progress=False, figures="none")
    return root, json.loads((root / "run" / "metrics.json").read_text())


def _activations(x, weights: dict, run: dict) -> np.ndarray:
    """The SAE's latent activations from its saved weights: ReLU, or the k largest (ReLU'd) for TopK."""
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    if run["label"] == "topk":
        kth = np.sort(pre, axis=1)[:, -2:-1]  # k = 2
        pre = np.where(pre >= kth, pre, 0.0)
    return np.maximum(pre, 0.0)


def _files(root, metrics, run):
    world = metrics["world"]
    start, stop = world["eval_range"]
    concepts = world["concepts"]
    x = np.load(root / "x.npy")[start:stop].astype(np.float64)
    labels = np.load(root / "labels.npy")[start:stop][:, concepts]
    F = np.load(root / "directions.npy").astype(np.float64)[concepts]
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    weights = {
        k: v.astype(np.float64)
        for k, v in load_file(
            str(root / "run" / "weights" / f"{run['label']}-seed{run['seed']}.safetensors")
        ).items()
    }
    return x, labels, F, weights, _activations(x, weights, run)


def test_absorption_matches_the_definitions(language_style_run):
    root, metrics = language_style_run
    world = metrics["world"]
    assert len(metrics["runs"]) == 2 and world["edges"] == [[0, 1], [0, 2], [3, 4], [3, 5]]
    for run in metrics["runs"]:
        x, labels, F, weights, h = _files(root, metrics, run)
        W = weights["W_dec"]
        cos_KC = (W / np.linalg.norm(W, axis=1, keepdims=True)) @ F.T
        live = h.max(0) > 0
        # The one-to-one matching (Hungarian, on the signed cosine, live latents only).
        latents = np.flatnonzero(live)
        r, c = linear_sum_assignment(-cos_KC[latents])
        matched = {int(ci): int(latents[ri]) for ri, ci in zip(r, c)}
        assert matched == {m["feature"]: m["latent"] for m in run["matches"]}

        # This project's absorption fraction: per row where the concept is active, the share of the positive
        # contributions h_j (W_j . d_i) carried by latents other than the match.
        for i in range(F.shape[0]):
            contributions = h[labels[:, i]] * (W @ F[i])
            contributions = np.where(contributions > 1e-6, contributions, 0.0)
            total = contributions.sum(1)
            others = total - contributions[:, matched[i]]
            share = np.divide(others, total, out=np.zeros_like(total), where=total > 0)
            assert share.mean() == pytest.approx(run["absorption"][i], abs=2e-4), (run["label"], i)

        # SAEBench's absorption fraction and full absorption, on the probes metrics.json records, per input
        # as feature_absorption_calculator.py decides it.
        saebench = run["saebench_absorption"]
        w_CD, b_C = np.array(world["probe_weights"]), np.array(world["probe_bias"])
        checked = 0
        for i in range(F.shape[0]):
            p = w_CD[i] / np.linalg.norm(w_CD[i])
            cos = (W @ p) / np.linalg.norm(W, axis=1)
            main_ids = saebench["main_latents"][i]
            assert main_ids, "k-sparse probing always keeps k = 1"
            rows = np.flatnonzero(labels[:, i] & (x @ w_CD[i] + b_C[i] > 0))
            assert len(rows) == saebench["probe_true_positives"][i] > 0
            fractions, fulls = [], []
            for row in rows:
                s = h[row] * cos
                P = float(x[row] @ p)
                m = float(sum(s[k] for k in main_ids))
                candidates = sorted(
                    (
                        s[k]
                        for k in range(len(s))
                        if k not in main_ids and cos[k] >= 0.1 and s[k] > 0
                    ),
                    reverse=True,
                )
                T = float(sum(candidates[:3]))
                if m >= P or P <= 0 or T / P < 0.4:
                    fraction = 0.0
                elif m <= 0:
                    fraction = 1.0
                else:
                    A = min(T, P - m)
                    fraction = min(max(A / (A + m), 0.0), 1.0)
                fractions.append(fraction)
                top = int(np.argmax(s))
                fulls.append(
                    all(abs(h[row, k]) < 1e-8 for k in main_ids)
                    and cos[top] >= 0.025
                    and P > 0
                    and s[top] / P >= 0.4
                )
            assert np.mean(fractions) == pytest.approx(saebench["absorption_fraction"][i], abs=1e-5)
            assert np.mean(fulls) == pytest.approx(saebench["full_absorption"][i], abs=1e-5)
            checked += 1
        assert checked == 6


def test_truth_and_detector_precision_recall_match(language_style_run):
    root, metrics = language_style_run
    threshold = load_score_model().threshold
    for run in metrics["runs"]:
        x, labels, F, weights, h = _files(root, metrics, run)
        W = weights["W_dec"]
        norms = np.linalg.norm(W, axis=1)
        cos_KC = (W / norms[:, None]) @ F.T
        live = h.max(0) > 0
        # Broken by the truth: best |cos| < 0.95, or as a detector of that concept a firing F1 < 0.9, where a
        # latent fires writing >= 0.1 of the concept's mean magnitude (its projection from the mean, where active).
        magnitude = np.where(labels, np.maximum((x - x.mean(0)) @ F.T, 1e-6), 0.0)
        mean_magnitude = magnitude.sum(0) / np.maximum(labels.sum(0), 1)
        broken = []
        for j in range(len(W)):
            i = int(np.abs(cos_KC[j]).argmax())
            fires = h[:, j] * norms[j] >= 0.1 * mean_magnitude[i]
            tp = (fires & labels[:, i]).sum()
            f1 = 2 * tp / (fires.sum() + labels[:, i].sum())
            broken.append(bool(live[j] and (abs(cos_KC[j, i]) < 0.95 or f1 < 0.9)))
        assert broken == run["truth_broken"]
        flagged = [score >= threshold for score in run["broken_score"]]
        both = sum(b and f for b, f in zip(broken, flagged))
        detection = run["detection"]
        assert (detection["truth_broken"], detection["flagged"], detection["both"]) == (
            sum(broken),
            sum(flagged),
            both,
        )
        assert detection["precision"] == pytest.approx(both / max(sum(flagged), 1), abs=1e-6)
        assert detection["recall"] == pytest.approx(both / max(sum(broken), 1), abs=1e-6)
        # Per direction: its best |cos| with a live latent, and learned = matched one-to-one at >= 0.95.
        for record in run["per_direction"]:
            i = record["direction"]
            assert record["best_cos"] == pytest.approx(np.abs(cos_KC[live, i]).max(), abs=1e-5)
            assert record["learned"] == (i in run["learned_features"])
