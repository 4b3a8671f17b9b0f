"""SynthSAEBench at the field's scale (SAELens' `sae_lens.synthetic`, arXiv 2602.14687): the post's
questions (tied vs untied, the aux loss, Matryoshka) asked of a world with thousands of features.

`synthbench_world(F, D)` is SynthSAEBench-16k's laws with the number of trees scaled to the feature
count (128 roots at 16,384 features keeps about two thirds of the features in trees, so roots =
round(128 F / 16384)): Zipf firing (exponent 0.5, 0.4 down to 5e-4), trees of branching 4 and depth 3
with every set of siblings mutually exclusive, compensated rates and children scaled by their parent,
low-rank correlation (rank 25, scale 0.1), mean magnitudes 5.0 -> 4.0 with folded-normal spread
(0.5, 0.5), and a bias of norm 0.5. At 256 x 32 (seed 7) these laws give the very world SAELens writes
(tests/world/test_laws.py); at 16,384 x 768 the sparse sampler's true L0 is 34.5 (the paper: about 34).

synthbench-4k (2 seeds x 300k samples, batch 256, lr 3e-3; docs/science/synthbench.md has the table
beside the paper's): measured on 2 cores shared with other jobs (load 9.5-10.6), 11 min wall at 45% of
a CPU, 299 s of CPU time, training at 6,600 samples/s over its ten SAEs. Mean over the seeds, F1 / MCC:
tied 0.056 / 0.325, untied 0.155 / 0.508, BatchTopK 0.493 / 0.604, Matryoshka 0.576 / 0.638, tied-aux
0.058 / 0.348 (the paper at 16k, 200M samples: BatchTopK 0.732 / 0.757, Matryoshka 0.879 / 0.793).
Its claims (CLAIMS_4K), each held in both seeds: Matryoshka beats BatchTopK; the aux loss leaves F1 where
it was but keeps every latent alive (tied: ~556 dead), raising MCC by 0.02 and the broken count; no SAE
shows a mean absorption gap beyond +-0.002, so tied absorbs no less than untied; untied's MCC is 0.18
above tied's; the L1 SAEs (L1 = 1, untuned) fire 91-167 latents a sample against a true L0 of 16.
The analysis at width 1024 is bounded (analysis/measure.py): peak models for the 64 most-firing latents
per SAE and seed, absorption over the latents' nonzero activations, 8192 held-out samples drawn once.

Every architecture (tied, untied, JumpReLU, TopK, BatchTopK, Matryoshka, aux loss) ran 200 steps of
batch 128 at width 4096 on synthbench_world(16384, 768): 228 samples/s for all seven together
(autograd, one thread), the ReLU SAEs' mse 4,400 -> 350, the k-sparse ones' 650 -> 630.
"""

from __future__ import annotations

from ..config.schema import (
    AuxConfig,
    CorrelationConfig,
    ExperimentConfig,
    SAEConfig,
    TrainConfig,
    TreeConfig,
    WorldConfig,
)
from . import checks as c
from .claims import Claim
from .registry import Experiment, register
from ..analysis.metrics import Metrics, RunMetrics


def synthbench_world(features: int, dim: int, seed: int = 0) -> WorldConfig:
    return WorldConfig(
        features=features,
        dim=dim,
        seed=seed,
        firing={"zipf": {"exponent": 0.5, "max": 0.4, "min": 5e-4}},
        magnitude={"linear": [5.0, 4.0]},
        magnitude_std={"folded_normal": {"mean": 0.5, "std": 0.5}},
        bias=0.5,
        tree=TreeConfig(
            roots=max(1, round(128 * features / 16384)),
            branching=4,
            depth=3,
            mutually_exclusive=1.0,
            mutually_exclusive_min_depth=0,
            compensate_probabilities=True,
            scale_children_by_parent=True,
        ),
        correlation=CorrelationConfig(rank=25, scale=0.1),
    )


SYNTHBENCH_4K_K = 12
"""True L0 of the 1024 most frequent features of synthbench_world(4096, 256): 12.19 (measured: 200,000
samples of the sparse sampler; all 4096 features: L0 16.06). synthbench_world(16384, 768): 34.5 over all
features (SynthSAEBench-16k reports about 34), 18.1 over its top 1024."""

L1 = 1.0
"""L1 coefficient of the ReLU SAEs here: not tuned (with magnitudes near 5 and a unit decoder row, an L1 of
1 shrinks a latent by 0.5, a tenth of its feature)."""


TABLE = (
    "mcc",
    "uniqueness",
    "precision",
    "recall",
    "f1",
    "sae_l0",
    "dead_count",
    "shrinkage",
    "explained_variance",
)
"""SynthSAEBench's columns (analysis/scale.py, SAELens' definitions), as RunMetrics names them."""


def mean_absorption_gap(run: RunMetrics) -> float:
    """Mean over the hierarchy's parent -> child edges (those where both conditions occurred) of the
    absorption gap: about 0 when parent latents fire whether or not a child does, near 1 when child
    latents absorb their parents."""
    gaps = [g.gap for g in run.absorption_gap or [] if g.gap is not None]
    return sum(gaps) / len(gaps) if gaps else 0.0


def broken_count(run: RunMetrics) -> float:
    """Live latents matched to a feature below the clean cosine (metrics.json's broken_latents)."""
    return float(len(run.broken_latents))


def f1(run: RunMetrics) -> float:
    return run.f1


def mcc(run: RunMetrics) -> float:
    return run.mcc


def l0(run: RunMetrics) -> float:
    return run.sae_l0


def dead(run: RunMetrics) -> float:
    return float(run.dead_count)


POST_AUX = (
    "a possible path forward for solving broken latents ... broken latents in tied SAEs correspond to "
    "multiple peaks in the activation histogram"
)
POST_TIED = "This orthogonality bias is likely why tied SAEs are more resistant to absorption than untied SAEs"
PAPER_16K = "SynthSAEBench-16k at L0 25: BatchTopK F1 0.732 / MCC 0.757, Matryoshka 0.879 / 0.793"

CLAIMS_4K = [
    Claim(
        "matryoshka-beats-batchtopk",
        "Matryoshka's F1 is at least 0.04 above BatchTopK's (same k, width and budget)",
        PAPER_16K,
        c.compares("matryoshka", "batchtopk", "F1", f1, 0.04),
    ),
    Claim(
        "matryoshka-mcc-above-batchtopk",
        "Matryoshka's MCC is at least 0.015 above BatchTopK's",
        PAPER_16K,
        c.compares("matryoshka", "batchtopk", "MCC", mcc, 0.015),
    ),
    Claim(
        "aux-keeps-f1",
        "the aux loss does not raise F1: tied-aux's F1 is within 0.02 of tied's",
        POST_AUX,
        c.within("tied-aux", "tied", "F1", f1, 0.02),
    ),
    Claim(
        "aux-revives-dead-latents",
        "the aux loss keeps latents alive: tied has at least 300 more dead latents than tied-aux",
        POST_AUX,
        c.compares("tied", "tied-aux", "dead latents", dead, 300),
    ),
    Claim(
        "aux-raises-mcc",
        "tied-aux's MCC is at least 0.01 above tied's",
        POST_AUX,
        c.compares("tied-aux", "tied", "MCC", mcc, 0.01),
    ),
    Claim(
        "aux-does-not-lower-broken",
        "the aux loss does not lower the number of broken latents: tied-aux has at least 100 more "
        "(the latents it keeps alive match a feature below cos 0.95)",
        POST_AUX,
        c.compares("tied-aux", "tied", "broken latents", broken_count, 100),
    ),
    Claim(
        "no-absorption-gap",
        "no SAE absorbs parents on average: each one's mean absorption gap over the tree's edges lies "
        "within [-0.01, 0.01]",
        POST_TIED,
        c.bounded(
            ["tied", "untied", "batchtopk", "matryoshka", "tied-aux"],
            "mean absorption gap",
            mean_absorption_gap,
            -0.01,
            0.01,
        ),
    ),
    Claim(
        "tied-absorbs-like-untied",
        "tied and untied mean absorption gaps differ by at most 0.01 (tied does not absorb less)",
        POST_TIED,
        c.within("tied", "untied", "mean absorption gap", mean_absorption_gap, 0.01),
    ),
    Claim(
        "untied-beats-tied",
        "untied's MCC is at least 0.1 above tied's at this budget",
        "Tied SAEs appear to be more resilient to learning broken latents than untied SAEs",
        c.compares("untied", "tied", "MCC", mcc, 0.1),
    ),
    Claim(
        "l1-saes-not-sparse",
        "the L1 SAEs are far from the true L0 (16 over all features): each fires at least 50 latents a sample",
        "(context of the comparisons above: L1 = 1 is not tuned here)",
        c.bounded(["tied", "untied", "tied-aux"], "L0", l0, 50, 1024),
    ),
]
"""What synthbench-4k shows at its budget (2 seeds x 300k samples), measured before the claims were
written (docs/science/synthbench.md has the table)."""


def synthbench_table(metrics: Metrics) -> list[dict]:
    """One row per SAE (in the run's order): each TABLE column's mean over the seeds, with its min and
    max, plus ours (broken latents, mean absorption gap); `seeds` says over how many."""
    by_label: dict[str, list[RunMetrics]] = {}
    for run in metrics.runs:
        by_label.setdefault(run.label, []).append(run)
    rows = []
    for label, runs in by_label.items():
        row: dict = {"label": label, "seeds": len(runs)}
        columns = {name: (lambda r, n=name: float(getattr(r, n))) for name in TABLE}
        columns |= {"broken_latents": broken_count, "absorption_gap": mean_absorption_gap}
        for name, value in columns.items():
            values = [value(r) for r in runs]
            row[name] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
        rows.append(row)
    return rows


def table_markdown(metrics: Metrics) -> str:
    """synthbench_table as a markdown table: mean over seeds ([min, max] where the seeds differ)."""
    rows = synthbench_table(metrics)
    names = [*TABLE, "broken_latents", "absorption_gap"]
    lines = ["| SAE | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in rows:
        cells = []
        for name in names:
            cell = row[name]
            digits = 1 if name in ("sae_l0", "dead_count", "broken_latents") else 3
            text = f"{cell['mean']:.{digits}f}"
            if round(cell["min"], digits) != round(cell["max"], digits):
                text += f" [{cell['min']:.{digits}f}, {cell['max']:.{digits}f}]"
            cells.append(text)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _scale_study(
    name: str,
    description: str,
    world: WorldConfig,
    samples: int,
    lr: float,
    saes: list,
    eval_samples: int = 10_000,
    seeds: int = 1,
    batch_size: int = 1024,
    claims: list[Claim] | None = None,
) -> Experiment:
    return Experiment(
        ExperimentConfig(
            name=name,
            description=description,
            world=world,
            sae=saes,
            train=TrainConfig(
                samples=samples,
                batch_size=batch_size,
                lr=lr,
                seeds=seeds,
                eval_samples=eval_samples,
                lr_decay="cosine" if lr > 3e-4 else "none",
            ),
        ),
        claims=claims or [],  # none until measured: what the runs show, whatever it is
        reproduced=False,
    )


def _aux(samples: int) -> AuxConfig:
    """The post's aux loss with its schedule scaled to the budget: a third plain, a third of warm-up."""
    return AuxConfig(
        coefficient=10_000.0,
        threshold_ratio=0.7,
        window_batches=50,
        delay_samples=samples // 3,
        warmup_samples=samples // 3,
    )


SAMPLES_4K = 300_000
"""Training samples per SAE and seed of synthbench-4k: what 2 seeds of its five SAEs train in a few minutes
on 2 cores at the current training speed (the paper trains 200M). `--samples` trains longer (the aux loss's
schedule then stays that of 300k: set train.samples in a TOML copy to rescale it)."""
BATCH_4K = 256
"""Batch of synthbench-4k (the paper: 1024): at a budget of 300k samples, 1172 steps instead of 293 (lr 3e-3,
500k samples: BatchTopK MCC 0.665 / F1 0.546 at batch 256, 0.595 / 0.511 at 1024)."""
LR_4K = 3e-3
"""lr of synthbench-4k (cosine decay): at 500k samples and batch 1024, BatchTopK reached MCC 0.42 / F1 0.34
at 1e-3, 0.60 / 0.51 at 3e-3 and 0.53 / 0.37 at 1e-2."""
EVAL_4K = 8192
"""Held-out samples of synthbench-4k's metrics: as many as the per-latent analyses hold at once
(measure.DETAIL_BYTES: 8,811 at this size), so the SynthSAEBench table reads the samples already
drawn instead of drawing the held-out stream a second time."""
register(
    _scale_study(
        "synthbench-4k",
        "SynthSAEBench-16k's laws on 4096 features in 256 dims, width-1024 SAEs (k = 12, the true L0 of the top "
        "1024 features): tied vs untied, BatchTopK, Matryoshka and the aux loss at scale",
        synthbench_world(4096, 256),
        SAMPLES_4K,
        LR_4K,
        [
            SAEConfig(label="tied", architecture="tied", latents=1024, l1=L1),
            SAEConfig(label="untied", architecture="untied", latents=1024, l1=L1),
            SAEConfig(
                label="batchtopk",
                architecture="untied",
                latents=1024,
                activation="batchtopk",
                k=SYNTHBENCH_4K_K,
            ),
            SAEConfig(
                label="matryoshka",
                architecture="untied",
                latents=1024,
                activation="batchtopk",
                k=SYNTHBENCH_4K_K,
                matryoshka_widths=[128, 512, 1024],
            ),
            SAEConfig(
                label="tied-aux", architecture="tied", latents=1024, l1=L1, aux=_aux(SAMPLES_4K)
            ),
        ],
        eval_samples=EVAL_4K,
        seeds=2,
        batch_size=BATCH_4K,
        claims=CLAIMS_4K,
    )
)

register(
    _scale_study(
        "synthbench-16k",
        "SynthSAEBench-16k as the paper sets it (16,384 features in 768 dims, width 4096, 200M samples, lr 3e-4, "
        "batch 1024, L0 25): BatchTopK, Matryoshka, JumpReLU and standard L1. Days on a CPU; preflight says so",
        synthbench_world(16384, 768),
        200_000_000,
        3e-4,
        [
            SAEConfig(
                label="batchtopk", architecture="untied", latents=4096, activation="batchtopk", k=25
            ),
            SAEConfig(
                label="matryoshka",
                architecture="untied",
                latents=4096,
                activation="batchtopk",
                k=25,
                matryoshka_widths=[128, 512, 2048, 4096],
            ),
            SAEConfig(
                label="jumprelu", architecture="untied", latents=4096, activation="jumprelu", l1=L1
            ),
            SAEConfig(label="standard", architecture="untied", latents=4096, l1=L1),
        ],
    )
)
