"""The path an outside judge takes: SAEs trained by a plain PyTorch loop (no code of this project),
saved as SAELens folders, inspected from a .npy of activations alone, the verdicts scored against the
truth (analysis/truth.py) computed from the world's known features.

The world: parent f0 and child f1 (the child switches the parent on), three independent features,
orthogonal directions in 16 dims, magnitudes about 1. A tied SAE learns every feature cleanly (each
latent at one peak); an untied one absorbs: the child's latent decodes child + parent (cos 0.73 with
its best feature) and the parent's latent, with a clean decoder, falls silent when the child fires
(firing F1 0.78). Both absorbed latents show a single peak, so a peak count misses them. A second world
gives f0 two mutually exclusive children instead."""

import numpy as np
import pytest
import torch

from broken_latents.analysis.truth import truth_broken
from broken_latents.output.saelens_format import load_sae, write_saelens
from inspecting import inspect_latents

D, F = 16, 5
RATES = np.array([0.15, 0.15, 0.2, 0.2, 0.2])
STEPS, BATCH, LR, L1 = 1500, 256, 2e-2, 3e-2


def _world(n: int, seed: int, exclusive: bool = False):
    """(features [n, F], activations [n, D], directions [F, D]); the directions are fixed. `exclusive`:
    f1 and f2 are mutually exclusive children of f0 (each on 30% of the parent's inputs, never both)."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))[0].T[:F]
    on = rng.random((n, F)) < RATES
    if exclusive:
        on[:, 0] = rng.random(n) < 0.3
        pick = rng.random(n)
        on[:, 1], on[:, 2] = on[:, 0] & (pick < 0.3), on[:, 0] & (pick >= 0.3) & (pick < 0.6)
    else:
        on[:, 0] |= on[:, 1]
    f = on * np.clip(rng.normal(1.0, 0.05, (n, F)), 0, None)
    return f.astype(np.float32), (f @ directions).astype(np.float32), directions


def _train_plain(
    tied: bool, exclusive: bool = False, x: np.ndarray | None = None, latents: int = F
) -> dict:
    """A ReLU SAE by a plain Adam loop: mse + L1 x sum h_j ||W_j||, cosine lr decay; on `x` [STEPS x
    BATCH, D] when given, else on this module's world."""
    torch.manual_seed(0)
    x = torch.from_numpy(_world(STEPS * BATCH, 1, exclusive)[1] if x is None else x)
    D = x.shape[1]
    W_dec = torch.nn.Parameter(torch.randn(latents, D) / D**0.5)
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(latents)), torch.nn.Parameter(torch.zeros(D))
    params = [W_dec, b_enc, b_dec] + ([] if tied else [W_enc])
    opt = torch.optim.Adam(params, lr=LR)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    for step in range(STEPS):
        x_BD = x[step * BATCH : (step + 1) * BATCH]
        h_BK = torch.relu((x_BD - b_dec) @ (W_dec.T if tied else W_enc) + b_enc)
        loss = (h_BK @ W_dec + b_dec - x_BD).pow(2).sum(-1).mean() + L1 * (
            h_BK * W_dec.norm(dim=1)
        ).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    encoder = W_dec.T if tied else W_enc
    return {
        name: t.detach().numpy().copy()
        for name, t in zip(("W_enc", "W_dec", "b_enc", "b_dec"), (encoder, W_dec, b_enc, b_dec))
    }


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Per SAE (tied, untied, untied on the exclusive world): (inspect.json's latents, truth broken,
    best |cos|, firing F1)."""
    root = tmp_path_factory.mktemp("judge")
    out = {}
    for name, tied, exclusive in (
        ("tied", True, False),
        ("untied", False, False),
        ("exclusive", False, True),
    ):
        f_BF, x_BD, directions = _world(20_000, 2, exclusive)
        np.save(root / f"acts-{name}.npy", x_BD)
        write_saelens(root / name, _train_plain(tied, exclusive), "relu", tied=tied)
        latents = inspect_latents(root / name, root / f"acts-{name}.npy", root / f"out-{name}")
        sae = load_sae(root / name)
        h_BK = sae.encode(x_BD)
        truth, cos, f1 = truth_broken(h_BK, sae.W_dec, directions, f_BF, h_BK.max(0) > 0)
        out[name] = (latents, truth, cos, f1)
    return out


def test_clean_narrow_latents_report_one_peak_and_are_not_flagged(judged):
    latents, truth, cos, _ = judged["tied"]
    assert len(latents) == F and not truth.any() and (cos >= 0.98).all()
    for r in latents:
        assert r["peaks"] == 1 and len(r["peak_means"]) == 1 and not r["broken"], r


def test_absorbed_latents_with_one_peak_are_found(judged):
    latents, truth, cos, f1 = judged["untied"]
    flagged = np.array([r["broken"] for r in latents])
    # The truth sees both kinds of absorption: a bent decoder, and a clean decoder that misses firings.
    assert ((cos < 0.95) & truth).sum() == 1 and ((cos >= 0.95) & (f1 < 0.9) & truth).sum() == 1
    assert (flagged == truth).all(), [(r["latent"], r["score"], t) for r, t in zip(latents, truth)]
    assert all(latents[j]["peaks"] == 1 for j in np.flatnonzero(truth))  # what a peak count misses


def test_mutually_exclusive_children_merged_or_absorbed_are_found(judged):
    """Exclusive children f1, f2 of f0: the untied SAE's child latents decode child + parent (cos < 0.8),
    the parent's latent misses firings; the two clean independents stay unflagged."""
    latents, truth, cos, _ = judged["exclusive"]
    flagged = np.array([r["broken"] for r in latents])
    assert truth.sum() == 3 and ((cos < 0.95) & truth).sum() == 2
    assert (flagged == truth).all(), [(r["latent"], r["score"], t) for r, t in zip(latents, truth)]


def _narrow_draw(world, n: int, offset: int):
    """(features [n, F], activations [n, D]) of the project's narrow world, from its own stream."""
    from broken_latents.world.stream import DataStream

    f_RNB = DataStream(world, [0], n, offset=offset, chunk=1).next()
    return f_RNB[0].T.numpy(), world.inputs(f_RNB)[0].numpy().astype(np.float32)


def test_clean_latents_of_a_narrow_world_trained_by_a_plain_loop_show_one_peak(tmp_path):
    """The post's narrow world (20 features, magnitudes 20 down to 1, 5 and 7 force 12, dim 50) and a
    tied 5-latent SAE trained by the plain loop: every latent whose decoder is at |cos| >= 0.98 with a
    feature (its small leaks of unlearned features make shoulders, not peaks) reports one peak."""
    from broken_latents.config.schema import HierarchyConfig
    from broken_latents.experiments.post import narrow_world
    from broken_latents.world.model import World

    world = World.build(narrow_world(HierarchyConfig(parent=12, children=[5, 7])))
    x_train = _narrow_draw(world, STEPS * BATCH, 3)[1]
    f_BF, x_BD = _narrow_draw(world, 20_000, 8)
    np.save(tmp_path / "acts.npy", x_BD)
    write_saelens(tmp_path / "sae", _train_plain(True, x=x_train, latents=5), "relu", tied=True)
    latents = inspect_latents(tmp_path / "sae", tmp_path / "acts.npy", tmp_path / "out")
    sae = load_sae(tmp_path / "sae")
    h_BK = sae.encode(x_BD)
    _, cos, _ = truth_broken(h_BK, sae.W_dec, world.directions_ND.numpy(), f_BF, h_BK.max(0) > 0)
    clean = np.flatnonzero(cos >= 0.98)
    assert len(clean) >= 2, cos
    assert all(latents[j]["peaks"] == 1 for j in clean), [
        (latents[j]["peak_means"], cos[j]) for j in clean
    ]


def test_the_benchmarks_reference_latents_are_these_saes_signals(judged):
    """studies/detection-sentinels.json holds these three SAEs' latents for the score's policy; a change
    to a signal or to this loop must regenerate it (python studies/detection_sentinels.py)."""
    import json
    from pathlib import Path

    from broken_latents.analysis.signals import SIGNALS

    stored = json.loads(
        (Path(__file__).parents[2] / "studies" / "detection-sentinels.json").read_text()
    )
    for name in ("tied", "untied", "exclusive"):
        latents, truth, _, _ = judged[name]
        rows = [r for r in stored if r["sae"] == name]
        assert [r["truth"] for r in rows] == [bool(t) for t in truth]
        for r in rows:
            signals = latents[r["latent"]]["signals"]
            assert all(abs(signals[s] - r[s]) <= 2e-4 for s in SIGNALS), (name, r["latent"])
