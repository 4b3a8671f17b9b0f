"""Detection on SAEs this project did not train: a plain PyTorch loop (no code of ours: Adam, no
resampling, no tricks), the SAE saved as a SAELens folder and inspected through the CLI
(`broken-latents inspect FOLDER --activations FILE.npy`) from activations alone, its verdicts scored
against the truth (analysis/truth.py). The detection benchmark's SAEs all come from our own trainer;
this is the check that the score does not lean on how they were trained.

Worlds: the detection benchmark's families (studies/detection_benchmark.py) of the kinds an outside
judge uses (FAMILIES), at its world seeds: 0-2 and the benchmark's retired 3-5 may enter the score's
fit (stage `rows`; `train-retired`), 6-8 are held out from the fit, and 9-11 (FRESH_SEEDS) were
generated after the partner signals were chosen and measured once with each score. Per world the SAE variants VARIANTS, one training seed each, as
SAELens trains them: untied ReLU with L1 on h_j ||W_j||, untied TopK, and a tied ReLU. (JumpReLU with
a straight-through L0 estimator was tried untuned and left out: at this budget every latent came out
broken, cos 0.55-0.91, so it measured nothing.)

    python studies/plain_loop_check.py train     # CACHE/plain/FAMILY-wW-VARIANT/ (SAELens) + acts, inspected
    python studies/plain_loop_check.py inspect   # inspect every trained SAE again (after a signal change)
    python studies/plain_loop_check.py report    # precision, recall per family and variant, held-out seeds
    python studies/plain_loop_check.py train-fresh    # world seeds 9-11 (FRESH_SEEDS), with the final score
    python studies/plain_loop_check.py report-fresh
    python studies/plain_loop_check.py rows      # CACHE/plain-rows.json: benchmark-table rows of every SAE
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection_benchmark import (  # noqa: E402
    CACHE,
    FIT_SEEDS,
    RETIRED_SEEDS,
    configs,
    held_out_draw,
    _rates,
)

from broken_latents.analysis.signals import SIGNALS  # noqa: E402
from broken_latents.analysis.truth import truth_broken  # noqa: E402
from broken_latents.cli import main  # noqa: E402
from broken_latents.output.saelens_format import load_sae, write_saelens  # noqa: E402
from broken_latents.world.model import World  # noqa: E402
from broken_latents.world.stream import TRAIN_STREAM, DataStream  # noqa: E402

FAMILIES = ("absorption", "exclusive", "deep", "narrow", "matryoshka", "noisy")
WORLD_SEEDS = (6, 7, 8, 0, 1, 2)
"""Held-out seeds first, so the report can run while the fit seeds train."""
FRESH_SEEDS = (9, 10, 11)
"""The plain-loop SAEs of world seeds 6-8 were read (their misses) while the partner signals were
designed, so they are not held out from that choice: these seeds were generated afterwards, trained and
inspected once with the final score (`train-fresh`, `report-fresh`)."""
VARIANTS = ("untied-relu", "untied-topk", "tied-relu")
PLAIN = CACHE / "plain"
STEPS, BATCH, LR = 2500, 512, 3e-3
"""1.28M samples a SAE; Adam at 3e-3 with a linear decay over the last fifth (SAELens's default schedule shape)."""
L1 = 3e-2
"""On sum_j h_j ||W_j|| (SAELens's standard L1), the mse summed over dims and averaged over the batch."""


def train_plain(world: World, latents: int, variant: str, k: int, seed: int) -> dict:
    """One SAE by a plain Adam loop on fresh samples of `world`; returns SAELens tensors."""
    torch.manual_seed(seed)
    tied, activation = variant.split("-")[0] == "tied", variant.split("-")[1]
    D = world.directions_ND.shape[1]
    W_dec = torch.nn.Parameter(torch.randn(latents, D) / D**0.5)
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(latents)), torch.nn.Parameter(torch.zeros(D))
    params = [W_dec, b_enc, b_dec] + ([] if tied else [W_enc])
    opt = torch.optim.Adam(params, lr=LR)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, 5 * (1 - s / STEPS)))
    stream = DataStream(world, [seed], BATCH, offset=TRAIN_STREAM + 3, chunk=64)
    for _ in range(STEPS):
        x_BD = world.inputs(stream.next())[0].float()
        z_BK = (x_BD - b_dec) @ (W_dec.T if tied else W_enc) + b_enc
        penalty = 0.0
        if activation == "relu":
            h_BK = torch.relu(z_BK)
            penalty = L1 * (h_BK * W_dec.norm(dim=1)).sum(-1).mean()
        else:
            top = torch.topk(z_BK, k, dim=-1)
            h_BK = torch.zeros_like(z_BK).scatter(-1, top.indices, torch.relu(top.values))
        loss = (h_BK @ W_dec + b_dec - x_BD).pow(2).sum(-1).mean() + penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    out = {
        "W_enc": (W_dec.T if tied else W_enc).detach().numpy().copy(),
        "W_dec": W_dec.detach().numpy().copy(),
        "b_enc": b_enc.detach().numpy().copy(),
        "b_dec": b_dec.detach().numpy().copy(),
    }
    return out


def _name(family: str, w: int, variant: str) -> str:
    return f"{family}-w{w}-{variant}"


def _inspect(family: str, w: int, variant: str) -> None:
    name = _name(family, w, variant)
    acts = PLAIN / f"{family}-w{w}-acts.npy"
    main(
        [
            "inspect",
            str(PLAIN / name),
            "--activations",
            str(acts),
            "--out",
            str(PLAIN / f"{name}-inspect"),
        ]
    )


def stage_train(seeds=WORLD_SEEDS) -> None:
    """Train, save as SAELens, save the held-out activations, inspect through the CLI; cached per SAE."""
    PLAIN.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = time.time()
    for w in seeds:
        for family in FAMILIES:
            config = configs(family, w)[1]  # the TopK run: its k and latents
            world = World.build(config.world)
            latents, k = config.sae[0].latents, config.sae[0].k
            f_BN, x_BD = held_out_draw(world, 0)
            np.save(PLAIN / f"{family}-w{w}-acts.npy", x_BD)
            np.save(PLAIN / f"{family}-w{w}-features.npy", f_BN)
            for variant in VARIANTS:
                name = _name(family, w, variant)
                if not (PLAIN / name / "cfg.json").exists():
                    tensors = train_plain(world, latents, variant, k, seed=w)
                    # Written untied even when tied: write_saelens would zero a tied SAE's b_enc, which
                    # this loop trains; inspect tells tied from untied by W_enc == W_dec^T.
                    write_saelens(PLAIN / name, tensors, variant.split("-")[1], k=k)
                if not (PLAIN / f"{name}-inspect" / "inspect.json").exists():
                    _inspect(family, w, variant)
                print(f"{time.time() - started:6.0f}s {name}", flush=True)


def stage_inspect() -> None:
    """Inspect every trained SAE again (after a change to the signals or the score)."""
    for w in WORLD_SEEDS:
        for family in FAMILIES:
            for variant in VARIANTS:
                if (PLAIN / _name(family, w, variant) / "cfg.json").exists():
                    _inspect(family, w, variant)


def sae_rows(family: str, w: int, variant: str) -> list[dict]:
    """Benchmark-table rows (the truth, the inspect signals, the inspect verdict) of one plain SAE's live latents."""
    name = _name(family, w, variant)
    world = World.build(configs(family, w)[0].world)
    x_BD = np.load(PLAIN / f"{family}-w{w}-acts.npy")
    f_BN = np.load(PLAIN / f"{family}-w{w}-features.npy")
    sae = load_sae(PLAIN / name)
    h_BK = sae.encode(x_BD)
    norms = np.linalg.norm(sae.W_dec, axis=1)
    live = (h_BK.max(0) * norms) >= 0.1 * float(world.magnitudes_N.min())
    truth, best_cos, f1 = truth_broken(h_BK, sae.W_dec, world.directions_ND.numpy(), f_BN, live)
    latents = json.loads((PLAIN / f"{name}-inspect" / "inspect.json").read_text())["latents"]
    return [
        {
            "family": family,
            "world_seed": w,
            "label": f"plain-{variant}",
            "seed": w,
            "latent": int(j),
            "truth": bool(truth[j]),
            "best_cos": float(best_cos[j]),
            "f1": float(f1[j]),
            **{s: float(latents[j]["signals"][s]) for s in SIGNALS},
            "peaks": latents[j]["peaks"],
            "inspect_broken": latents[j]["broken"],
            "inspect_score": latents[j]["score"],
        }
        for j in np.flatnonzero(live)
    ]


def all_rows(seeds=WORLD_SEEDS) -> list[dict]:
    return [
        r
        for w in seeds
        for family in FAMILIES
        for variant in VARIANTS
        if (PLAIN / f"{_name(family, w, variant)}-inspect" / "inspect.json").exists()
        for r in sae_rows(family, w, variant)
    ]


def stage_rows() -> None:
    (CACHE / "plain-rows.json").write_text(json.dumps(all_rows((*WORLD_SEEDS, *RETIRED_SEEDS))))


def stage_report(seeds=None, out: str = "plain-report.json") -> None:
    """Inspect's verdicts against the truth on the held-out world seeds (or `seeds`), overall, per family,
    per variant; written to CACHE/`out`."""
    rows = [r for r in all_rows(seeds or WORLD_SEEDS) if seeds or r["world_seed"] not in FIT_SEEDS]
    y = np.array([r["truth"] for r in rows])
    p = np.array([r["inspect_broken"] for r in rows])
    clean = np.array([not r["truth"] and r["best_cos"] >= 0.98 for r in rows])
    report = {"overall": _rates(y, p), "families": {}, "variants": {}}
    report["clean_latents"] = int(clean.sum())
    report["clean_flagged"] = int((clean & p).sum())
    narrow = np.array([r["family"] == "narrow" for r in rows])
    report["world_seeds"] = sorted({r["world_seed"] for r in rows})
    report["saes"] = len({(r["family"], r["world_seed"], r["label"]) for r in rows})
    report["narrow_clean_one_peak"] = [
        int(sum(r["peaks"] == 1 for r, c in zip(rows, clean & narrow) if c)),
        int((clean & narrow).sum()),
    ]
    for key, field in (("families", "family"), ("variants", "label")):
        for name in sorted({r[field] for r in rows}):
            m = np.array([r[field] == name for r in rows])
            report[key][name] = {
                **_rates(y[m], p[m]),
                "clean_flagged": int((clean & p & m).sum()),
            }
    (CACHE / out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    {
        "train": stage_train,
        "inspect": stage_inspect,
        "report": stage_report,
        "rows": stage_rows,
        "train-fresh": lambda: stage_train(FRESH_SEEDS),
        "train-retired": lambda: stage_train(RETIRED_SEEDS),
        "report-fresh": lambda: stage_report(FRESH_SEEDS, "plain-report-fresh.json"),
    }[sys.argv[1]]()
