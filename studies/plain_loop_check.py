"""Detection on SAEs this project did not train: a plain PyTorch loop (no code of ours: Adam, no
resampling, no tricks), the SAE saved as a SAELens folder and inspected through the CLI
(`broken-latents inspect FOLDER --activations FILE.npy`) from activations alone, its verdicts scored
against the truth (analysis/truth.py). The detection benchmark's SAEs all come from our own trainer;
this is the check that the score does not lean on how they were trained.

Worlds: the detection benchmark's families (studies/detection_benchmark.py) of the kinds an outside
judge uses (FAMILIES), at its world seeds: 0-2 and the benchmark's retired 3-5 may enter the score's
fit (stage `rows`; `train-retired`), 6-8 are held out from the fit, 9-11 (FRESH_SEEDS) were
generated after the partner signals were chosen and measured once with each of two scores, and 12-14
(FINAL_SEEDS) after this version's choices, read once. Per world the SAE variants VARIANTS, one training
seed each, as SAELens trains them: untied ReLU with L1 on h_j ||W_j||, untied TopK, and a tied ReLU.
(JumpReLU with a straight-through L0 estimator was tried untuned and left out: at this budget every
latent came out broken, cos 0.55-0.91, so it measured nothing.) For the fit only, the varied SAEs
(`train-varied`, world seeds 20-25): other recipes (VARIED_LOOPS), tied TopK too, and three more families.

    python studies/plain_loop_check.py train     # CACHE/plain/FAMILY-wW-VARIANT/ (SAELens) + acts, inspected
    python studies/plain_loop_check.py inspect   # inspect again every SAE missing a signal (after one is added)
    python studies/plain_loop_check.py report    # precision, recall per family and variant, held-out seeds
    python studies/plain_loop_check.py train-fresh    # world seeds 9-11 (FRESH_SEEDS), with the final score
    python studies/plain_loop_check.py report-fresh
    python studies/plain_loop_check.py train-varied   # the fit's varied recipes, world seeds 20-25
    python studies/plain_loop_check.py train-final && python studies/plain_loop_check.py report-final  # 12-14
    python studies/plain_loop_check.py train-fifth && python studies/plain_loop_check.py train-fifth-varied
    python studies/plain_loop_check.py inspect-fifth && python studies/plain_loop_check.py report-fifth  # 30-35
    python studies/plain_loop_check.py inspect-rows   # every SAE of `rows` inspected again (a signal's definition changed)
    python studies/plain_loop_check.py rows      # CACHE/plain-rows.json: benchmark-table rows of every SAE
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection_benchmark import (  # noqa: E402
    CACHE,
    FIT_SEEDS,
    PLAIN_VARIED_SEEDS as VARIED_SEEDS,
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
FINAL_SEEDS = (12, 13, 14)
"""World seeds 9-11 were read with two scores (fit A, then fit B, made after A's figures there), so they
are no longer fresh: these were generated for the version with cofire_overlap, the varied recipes and
the plain-loop weight, trained and read once after every choice was frozen (`train-final`, `report-final`)."""
FINAL_VARIED_SEEDS = (12, 13, 14, 15, 16, 17)
"""The varied recipes (VARIED_LOOPS, tied TopK, three more families) on the final worlds: SAEs of other
loops than the check's own on worlds no fit saw, trained after fit C was frozen and read once
(`train-final-varied`, `report-final-varied`)."""
FINAL_SEEDS_2 = (15, 16, 17)
"""Three more, generated after FINAL_SEEDS were read (their figure for the previous score, fit B, was as
good as this version's, 0.927 against 0.933, where on 9-11 B had 0.866: one set of three seeds is a
noisy figure); nothing was changed in between, read once (`train-final2`, `report-final2`)."""
FIFTH_SEEDS = (30, 31, 32, 33, 34, 35)
"""For the fifth version (the mean of boosted trees and the products): worlds generated and trained, the check's own
recipe and the varied ones, while that version was chosen on the fit split; inspected with its frozen
weights and read once (`train-fifth`, `inspect-fifth`, `report-fifth`)."""
VARIANTS = ("untied-relu", "untied-topk", "tied-relu")
VARIED_FAMILIES = (*FAMILIES, "superposition", "wide", "independent")
VARIED_VARIANTS = (*VARIANTS, "tied-topk")
PLAIN = CACHE / "plain"
STEPS, BATCH, LR = 2500, 512, 3e-3
"""1.28M samples a SAE; Adam at 3e-3 with a linear decay over the last fifth (SAELens's default schedule shape)."""
L1 = 3e-2
"""On sum_j h_j ||W_j|| (SAELens's standard L1), the mse summed over dims and averaged over the batch."""


@dataclass(frozen=True)
class Loop:
    """One plain training recipe (the check's own is `Loop()`; the fit also reads others, VARIED_LOOPS)."""

    steps: int = STEPS
    """Adam steps of BATCH fresh samples."""
    lr: float = LR
    """Held, then decayed linearly to 0 over the last fifth of the steps."""
    l1: float = L1
    """ReLU variants: the penalty on sum_j h_j ||W_j||."""
    unit_decoder: bool = False
    """Decoder rows renormalised to unit norm after every step (the older recipe) instead of a free norm."""
    width: float = 1.0
    """Latents: this times the benchmark's latents for the world (rounded up)."""


VARIED_LOOPS = {
    "base": Loop(),
    "l1-1e-2": Loop(l1=1e-2),
    "l1-1e-1": Loop(l1=1e-1),
    "short": Loop(steps=1000),
    "long": Loop(steps=6000),
    "lr-1e-3": Loop(lr=1e-3, steps=5000),
    "unit-decoder": Loop(unit_decoder=True),
    "wide": Loop(width=1.5),
}
"""Training recipes of the varied plain-loop SAEs (fit only): other L1 strengths, lengths, learning rates,
a unit-norm decoder and more latents than the world's features, so the fit does not lean on one loop."""


def train_plain(
    world: World, latents: int, variant: str, k: int, seed: int, loop: Loop = Loop()
) -> dict:
    """One SAE by a plain Adam loop on fresh samples of `world`; returns SAELens tensors."""
    torch.manual_seed(seed)
    tied, activation = variant.split("-")[0] == "tied", variant.split("-")[1]
    D = world.directions_ND.shape[1]
    latents = int(np.ceil(loop.width * latents))
    W_dec = torch.nn.Parameter(torch.randn(latents, D) / D**0.5)
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(latents)), torch.nn.Parameter(torch.zeros(D))
    params = [W_dec, b_enc, b_dec] + ([] if tied else [W_enc])
    opt = torch.optim.Adam(params, lr=loop.lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, 5 * (1 - s / loop.steps)))
    stream = DataStream(world, [seed], BATCH, offset=TRAIN_STREAM + 3, chunk=64)
    for _ in range(loop.steps):
        x_BD = world.inputs(stream.next())[0].float()
        z_BK = (x_BD - b_dec) @ (W_dec.T if tied else W_enc) + b_enc
        penalty = 0.0
        if activation == "relu":
            h_BK = torch.relu(z_BK)
            penalty = loop.l1 * (h_BK * W_dec.norm(dim=1)).sum(-1).mean()
        else:
            top = torch.topk(z_BK, k, dim=-1)
            h_BK = torch.zeros_like(z_BK).scatter(-1, top.indices, torch.relu(top.values))
        loss = (h_BK @ W_dec + b_dec - x_BD).pow(2).sum(-1).mean() + penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
        if loop.unit_decoder:
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
    out = {
        "W_enc": (W_dec.T if tied else W_enc).detach().numpy().copy(),
        "W_dec": W_dec.detach().numpy().copy(),
        "b_enc": b_enc.detach().numpy().copy(),
        "b_dec": b_dec.detach().numpy().copy(),
    }
    return out


def _name(family: str, w: int, variant: str, loop: str = "base") -> str:
    return f"{family}-w{w}-{variant}" + ("" if loop == "base" else f"-{loop}")


def _inspect(family: str, w: int, variant: str, loop: str = "base") -> None:
    name = _name(family, w, variant, loop)
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


def varied_jobs(seeds=VARIED_SEEDS) -> list[tuple[str, int, str, str]]:
    """(family, world seed, variant, loop) of the varied SAEs: per world each of VARIED_VARIANTS with a
    different recipe of VARIED_LOOPS, drawn by the world seed (TopK, which has no L1, never gets an L1 one)."""
    jobs = []
    for w in seeds:
        for i, family in enumerate(VARIED_FAMILIES):
            rng = np.random.default_rng(100 * w + i)
            loops = [str(x) for x in rng.permutation(list(VARIED_LOOPS))]
            for variant in VARIED_VARIANTS:
                loop = next(
                    x for x in loops if not (variant.endswith("topk") and x.startswith("l1"))
                )
                loops.remove(loop)
                jobs.append((family, w, variant, loop))
    return jobs


def standard_jobs(seeds=WORLD_SEEDS) -> list[tuple[str, int, str, str]]:
    return [
        (family, w, variant, "base") for w in seeds for family in FAMILIES for variant in VARIANTS
    ]


def stage_train(seeds=WORLD_SEEDS, jobs=None) -> None:
    """Train, save as SAELens, save the held-out activations, inspect through the CLI; cached per SAE.
    `jobs`: (family, world seed, variant, loop) to train, else the check's own of `seeds`."""
    PLAIN.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = time.time()
    for family, w, variant, loop in jobs or standard_jobs(seeds):
        config = configs(family, w)[1]  # the TopK run: its k and latents
        world = World.build(config.world)
        latents, k = config.sae[0].latents, config.sae[0].k
        if not (PLAIN / f"{family}-w{w}-features.npy").exists():
            f_BN, x_BD = held_out_draw(world, 0)
            np.save(PLAIN / f"{family}-w{w}-acts.npy", x_BD)
            np.save(PLAIN / f"{family}-w{w}-features.npy", f_BN)
        name = _name(family, w, variant, loop)
        if not (PLAIN / name / "cfg.json").exists():
            tensors = train_plain(world, latents, variant, k, seed=w, loop=VARIED_LOOPS[loop])
            # Written untied even when tied: write_saelens would zero a tied SAE's b_enc, which
            # this loop trains; inspect tells tied from untied by W_enc == W_dec^T.
            write_saelens(PLAIN / name, tensors, variant.split("-")[1], k=k)
        if _stale(name):
            _inspect(family, w, variant, loop)
        print(f"{time.time() - started:6.0f}s {name}", flush=True)


def _stale(name: str) -> bool:
    """No inspect.json yet, or one written before a signal of SIGNALS existed."""
    done = PLAIN / f"{name}-inspect" / "inspect.json"
    return not done.exists() or bool(
        set(SIGNALS) - set(json.loads(done.read_text())["latents"][0]["signals"])
    )


def stage_inspect(
    seeds=(*WORLD_SEEDS, *RETIRED_SEEDS), varied: bool = True, jobs=None, every: bool = False
) -> None:
    """Inspect again every trained SAE whose inspect.json lacks a signal (after a signal was added), or,
    with `every`, each of `jobs` (after the score's weights changed)."""
    for family, w, variant, loop in jobs or standard_jobs(seeds) + (
        varied_jobs() if varied else []
    ):
        name = _name(family, w, variant, loop)
        if (PLAIN / name / "cfg.json").exists() and (every or _stale(name)):
            _inspect(family, w, variant, loop)


def sae_rows(family: str, w: int, variant: str, loop: str = "base") -> list[dict]:
    """Benchmark-table rows (the truth, the inspect signals, the inspect verdict) of one plain SAE's live latents."""
    name = _name(family, w, variant, loop)
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
            "loop": loop,
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


def all_rows(seeds=WORLD_SEEDS, jobs=None) -> list[dict]:
    return [
        r
        for family, w, variant, loop in jobs or standard_jobs(seeds)
        if (PLAIN / f"{_name(family, w, variant, loop)}-inspect" / "inspect.json").exists()
        for r in sae_rows(family, w, variant, loop)
    ]


def stage_rows() -> None:
    """CACHE/plain-rows.json: rows of the check's own SAEs (seeds 0-8) and of the varied ones (VARIED_SEEDS)."""
    rows = all_rows((*WORLD_SEEDS, *RETIRED_SEEDS)) + all_rows(jobs=varied_jobs())
    (CACHE / "plain-rows.json").write_text(json.dumps(rows))


def stage_report(seeds=None, out: str = "plain-report.json", jobs=None) -> None:
    """Inspect's verdicts against the truth on the held-out world seeds (or `seeds`, or the SAEs `jobs`),
    overall, per family, per variant (and recipe); written to CACHE/`out`."""
    rows = [
        r
        for r in all_rows(seeds or WORLD_SEEDS, jobs)
        if seeds or jobs or r["world_seed"] not in FIT_SEEDS
    ]
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
    report["loops"] = {}
    for key, field in (("families", "family"), ("variants", "label"), ("loops", "loop")):
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
        "inspect-fit": lambda: stage_inspect((*FIT_SEEDS, *RETIRED_SEEDS)),
        "inspect-rows": lambda: stage_inspect(
            jobs=standard_jobs((*WORLD_SEEDS, *RETIRED_SEEDS)) + varied_jobs(), every=True
        ),
        "report": stage_report,
        "rows": stage_rows,
        "train-fresh": lambda: stage_train(FRESH_SEEDS),
        "train-retired": lambda: stage_train(RETIRED_SEEDS),
        "train-varied": lambda: stage_train(jobs=varied_jobs()),
        "report-fresh": lambda: stage_report(FRESH_SEEDS, "plain-report-fresh.json"),
        "train-final": lambda: stage_train(FINAL_SEEDS),
        "report-final": lambda: stage_report(FINAL_SEEDS, "plain-report-final.json"),
        "train-final2": lambda: stage_train(FINAL_SEEDS_2),
        "train-final-varied": lambda: stage_train(jobs=varied_jobs(FINAL_VARIED_SEEDS)),
        "report-final-varied": lambda: stage_report(
            out="plain-report-final-varied.json", jobs=varied_jobs(FINAL_VARIED_SEEDS)
        ),
        "report-final2": lambda: stage_report(FINAL_SEEDS_2, "plain-report-final2.json"),
        "train-fifth": lambda: stage_train(FIFTH_SEEDS),
        "train-fifth-varied": lambda: stage_train(jobs=varied_jobs(FIFTH_SEEDS)),
        "inspect-fifth": lambda: stage_inspect(
            jobs=standard_jobs(FIFTH_SEEDS) + varied_jobs(FIFTH_SEEDS), every=True
        ),
        "report-fifth": lambda: stage_report(FIFTH_SEEDS, "plain-report-fifth.json"),
        "report-fifth-varied": lambda: stage_report(
            out="plain-report-fifth-varied.json", jobs=varied_jobs(FIFTH_SEEDS)
        ),
    }[sys.argv[1]]()
