"""Checks made before any training starts, so that a run that cannot finish says so at once:
an output path that cannot be written, a config the machine cannot hold in memory, a world whose
direction search would take minutes. Each failure is a `ConfigError` naming the field to change.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import ConfigError, ExperimentConfig, TrainConfig, WorldConfig, SAEConfig
from ..world import directions
from ..world.directions import CHUNK, SEARCH_BUDGET

MEMORY_SHARE = 0.7
"""A run may plan to use at most this share of the machine's physical memory."""

MAX_HOURS = 24.0
"""A run whose estimated time exceeds this is refused before it starts (see `estimate_seconds`)."""

SECONDS_PER_FLOP = {"cpu": 1 / 2e10, "cuda": 1 / 5e13}
"""Training speed assumed by `estimate_seconds` for the engines that take 6 B K D flops a step (autograd,
and on the CPU the compiled engine of feature-space worlds): one CPU core's rate on toy products
(about 20 GFLOP/s), and a datacenter GPU's at a quarter of peak."""

CPU_MATMUL_FLOPS = 1.2e11
"""One core's float32 matmul rate on a batch's products inside a training step (1024 x 256 x 1024:
148-179 GFLOP/s alone on a core of the 2-core Xeon, less beside the step's other passes): the
sparse-latent engine's encoder."""
SPARSE_LATENT_SECONDS = {"select": 2.0e-9, "entry_dim": 4.0e-10, "parameter": 4.5e-9}
"""The sparse-latent engine's other costs on one CPU core (training/engines.py
`CompiledSparseLatentsEngine`, width 1024, 256 dims, k 32, batch 1024, on the 2-core Xeon): selecting
the kept latents, per latent of a sample; the list pass, per kept entry and dimension; Adam's update,
per parameter and step. Set so that whole runs of 300k samples at 2048 and 4096 features (3.7-4.8 s
measured at load 1.4, helper thread and probe included) come out at 3.6 s."""

SPARSE_SECONDS_PER_INPUT = (0.6e-6, 1.3e-9)
"""The sparse sampler's time per input on its own core: a fixed part and one per feature of the world
(SynthSAEBench laws, 256 dims: 303k inputs per CPU-second at 2048 features, 167k at 4096, measured by
benchmarks/bench_sampler.py). The sampling thread runs beside the training: the slower of the two
sets the pace."""

FLOAT = 4  # bytes of a float32
JSON_NUMBER = 9
"""Bytes of one rounded number in metrics.json ("-0.1234, ")."""
OUTPUT_SHARE = 0.8
"""A run directory may take at most this share of the free disk space where it is written."""


def check_writable(out: Path, field: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any training: create its parent and a
    probe file there. A path under a file, under /proc or without permission fails here."""
    out = Path(out)
    for ancestor in [out, *out.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            where = "is" if ancestor == out else "lies under"
            raise ConfigError(field, f"{out} {where} a file ({ancestor}); give a directory path")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".probe-"):
            pass
    except OSError as err:
        raise ConfigError(field, f"cannot write under {parent}: {err.strerror or err}") from None


@dataclass
class MemoryEstimate:
    total: int
    parts: dict[str, int]
    """Bytes by what they hold: training state, batch buffers, evaluation, world."""
    culprit: str
    """The field most to blame: the one furthest above its default among the largest part's factors."""


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (not Linux)
        return 16 * 2**30


def estimate_memory(config: ExperimentConfig) -> MemoryEstimate:
    """Bytes a run of `config` needs, roughly and on the high side: parameters with Adam's moments,
    gradients and the flat copies (x6), the sampling thread's ring of chunks, per-SAE activations
    of a batch, and the evaluation's samples, inputs, reconstructions and activations at once."""
    w, t = config.world, config.train
    R, N, D, B, E = t.seeds, w.features, w.dim, t.batch_size, t.eval_samples
    Ks = [sae.latents for sae in config.sae]
    params = sum(R * (2 * K * D + K + D) for K in Ks)
    aux = sum(R * sae.latents * sae.aux.window_batches for sae in config.sae if sae.aux)
    state = FLOAT * (6 * params + aux)
    # 4 batches per chunk, 4 chunks in the ring, the raw words and firing masks of one chunk,
    # and per SAE a batch of inputs, activations and reconstructions.
    per_sae = sum(R * B * (3 * D + 3 * K) for K in Ks)
    if w.sparse:  # a queue of input batches; directions, copula factor and the chunked cosines
        rank = w.correlation.rank if w.correlation else 0
        batches = FLOAT * (4 * R * B * D + per_sae)
        world = FLOAT * (4 * N * D + N * rank + 3 * CHUNK * N)
    else:
        batches = FLOAT * (16 * R * N * B + 4 * N * B * 3 + per_sae)
        world = 8 * (3 * D * N if D >= N else 6 * N * N)
    # The per-latent analyses hold at most DETAIL_BYTES of samples per seed (analysis/measure.py); the
    # SynthSAEBench metrics stream over the rest, a batch of STREAM_BYTES at a time.
    from ..analysis.measure import DETAIL_BYTES, STREAM_BYTES

    held = FLOAT * E * (2 * N + 4 * D + sum(3 * K + 2 * D for K in Ks))
    evaluation = R * min(held, DETAIL_BYTES) + (STREAM_BYTES if held > DETAIL_BYTES else 0)
    parts = {
        "training state": state,
        "batch buffers": batches,
        "evaluation": evaluation,
        "world": world,
        "analysis": analysis_bytes(config),
    }
    largest = max(parts, key=parts.get)
    return MemoryEstimate(sum(parts.values()), parts, _culprit(config, largest))


def _culprit(config: ExperimentConfig, part: str) -> str:
    """Of the fields the largest part grows with, the one furthest above its default."""
    w, t = config.world, config.train
    ratios = {
        "world.features": w.features / WorldConfig.features,
        "world.dim": w.dim / WorldConfig.dim,
        "train.seeds": t.seeds / TrainConfig.seeds,
    }
    if part == "batch buffers":
        ratios["train.batch_size"] = t.batch_size / TrainConfig.batch_size
    if part == "evaluation":
        ratios["train.eval_samples"] = t.eval_samples / TrainConfig.eval_samples
    if part in ("training state", "batch buffers", "evaluation", "analysis", "outputs"):
        for sae in config.sae:
            ratios[f"sae.{sae.label}.latents"] = sae.latents / SAEConfig.latents
    if part == "world":
        ratios = {k: v for k, v in ratios.items() if k.startswith("world.")}
    if part in ("analysis", "outputs"):
        ratios = {
            k: v
            for k, v in ratios.items()
            if k in ("world.features", "train.seeds") or k.startswith("sae.")
        }
    return max(ratios, key=ratios.get)


def _matrix_bytes(entries: int) -> int:
    """Bytes a cosine matrix takes as metrics hold it: float16 past INLINE_MAX, else rounded JSON text."""
    from ..analysis.metrics import ARRAY_DTYPE, INLINE_MAX

    import numpy as np

    return entries * (np.dtype(ARRAY_DTYPE).itemsize if entries > INLINE_MAX else JSON_NUMBER)


def analysis_bytes(config: ExperimentConfig) -> int:
    """Memory the analysis takes beyond its samples: the cosine tables every SAE and seed keeps
    (decoder, encoder: K x F; latents: K x K; the world's F x F) and, one SAE at a time, the
    Hungarian matchings' float32 and float64 copies of a K x F table (about 20 bytes an entry)."""
    w, R = config.world, config.train.seeds
    kept = sum(
        R * _matrix_bytes(2 * sae.latents * w.features + sae.latents**2) for sae in config.sae
    )
    matching = max(20 * sae.latents * w.features for sae in config.sae)
    return kept + matching + (FLOAT + 2) * w.features**2


def output_bytes(config: ExperimentConfig) -> dict[str, int]:
    """Bytes the run directory will take, by what they hold (figures and reports aside, a few MB)."""
    w, R, D = config.world, config.train.seeds, config.world.dim
    weights = sum(
        R * 2 * FLOAT * (2 * sae.latents * D + 2 * sae.latents + D) for sae in config.sae
    )  # two formats
    tables = sum(
        R * _matrix_bytes(2 * sae.latents * w.features + sae.latents**2) for sae in config.sae
    )
    per_latent = sum(
        R * sae.latents * 200 for sae in config.sae
    )  # peaks, peak models, lists per latent
    return {
        "weights": weights,
        "cosine tables": tables + _matrix_bytes(w.features**2),
        "per-latent metrics": per_latent,
    }


def check_outputs(config: ExperimentConfig, out: Path, free: int | None = None) -> int:
    """Refuse a run whose directory would not fit in the free space under `out` (with room to
    spare: OUTPUT_SHARE of it), before training. Returns the estimated bytes."""
    parts = output_bytes(config)
    total = sum(parts.values())
    if free is None:
        existing = next(p for p in [Path(out), *Path(out).parents] if p.exists())
        free = shutil.disk_usage(existing).free
    if total > OUTPUT_SHARE * free:
        culprit = _culprit(config, "outputs")
        detail = ", ".join(f"{name} {_gib(b)}" for name, b in parts.items() if b >= 0.01 * total)
        raise ConfigError(
            culprit,
            f"this run writes about {_gib(total)} ({detail}) and {out} has {_gib(free)} "
            f"free, of which a run may use {OUTPUT_SHARE:.0%}: lower {culprit} "
            f"(now {_field_value(config, culprit):,}) or write elsewhere (--out)",
        )
    return total


def check_memory(config: ExperimentConfig, available: int | None = None) -> MemoryEstimate:
    """Refuse a config whose estimate exceeds MEMORY_SHARE of physical memory, naming the field to lower."""
    available = physical_memory() if available is None else available
    estimate = estimate_memory(config)
    limit = MEMORY_SHARE * available
    if estimate.total > limit:
        parts = ", ".join(
            f"{name} {_gib(b)}" for name, b in estimate.parts.items() if b >= 0.01 * estimate.total
        )
        value = _field_value(config, estimate.culprit)
        raise ConfigError(
            estimate.culprit,
            f"this run needs about {_gib(estimate.total)} of memory ({parts}); "
            f"this machine has {_gib(available)} and a run may use {MEMORY_SHARE:.0%} "
            f"of it: lower {estimate.culprit} (now {value:,})",
        )
    return estimate


def search_work(world: WorldConfig) -> float:
    """The max-|cos| search's work (world/directions.py), 0 where the world takes no search."""
    work = 0.0 if world.sparse else directions.search_work(world.features, world.dim)
    return work if work <= SEARCH_BUDGET else 0.0


def world_seconds(world: WorldConfig) -> float:
    """Laying out the directions: the search (about 15 s at SEARCH_BUDGET) or the decorrelation."""
    if world.features <= world.dim:
        return 0.0
    work = search_work(world)
    if work > 0:
        return work / SEARCH_BUDGET * 15
    return directions.decorrelation_seconds(world.features, world.dim)


def estimate_seconds(config: ExperimentConfig, device: str = "cpu") -> float:
    """Wall time of a run, roughly: the world's layout, then training at the pace of the engine that will
    run (`training_seconds_per_sample`) or, in a sparse world, the sampler's if slower."""
    w, t = config.world, config.train
    pace = training_seconds_per_sample(config, device)
    if w.sparse:
        fixed, per_feature = SPARSE_SECONDS_PER_INPUT
        pace = max(pace, fixed + per_feature * w.features)
    return world_seconds(w) + t.samples * t.seeds * pace


def training_seconds_per_sample(config: ExperimentConfig, device: str = "cpu") -> float:
    """Seconds a sample of one seed takes to train every SAE. The sparse-latent engine (sparse worlds,
    on the CPU) pays per SAE its encoder's 2 D K flops at CPU_MATMUL_FLOPS, the selection, the list pass
    (k entries x D) and Adam (SPARSE_LATENT_SECONDS); a ReLU SAE its dense products (8 D K more), the
    aux loss two more products, and an SAE it does not cover autograd's 6 D K. Other engines: 6 D K
    flops at SECONDS_PER_FLOP."""
    from ..engine import sparse_latents
    from .engines import choose_engine, sparse_latents_engine

    D, B = config.world.dim, config.train.batch_size
    dense = SECONDS_PER_FLOP["cuda" if device == "cuda" else "cpu"]
    sparse_engine = device == "cpu" and choose_engine(config, device) is sparse_latents_engine(
        device
    )
    total = 0.0
    for sae in config.sae:
        K = sae.latents
        if not (sparse_engine and sparse_latents.covers(sae)):
            total += 6 * D * K * dense
            continue
        flops = 2 * D * K + (8 * D * K if sae.activation == "relu" else 0)
        flops += 4 * D * K if sae.aux else 0
        cost = SPARSE_LATENT_SECONDS
        entries = sae.k * D * cost["entry_dim"] if sae.activation != "relu" else 0.0
        parameters = (K * D * (1 if sae.architecture == "tied" else 2) + K + D) / B
        total += (
            flops / CPU_MATMUL_FLOPS + K * cost["select"] + entries + parameters * cost["parameter"]
        )
    return total


def check_time(config: ExperimentConfig, device: str = "cpu") -> float:
    """Refuse a run estimated to take more than MAX_HOURS, naming train.samples."""
    seconds = estimate_seconds(config, device)
    if seconds > MAX_HOURS * 3600:
        gpu = " or run with --device cuda where a GPU is present" if device != "cuda" else ""
        most = int(config.train.samples * MAX_HOURS * 3600 / seconds)
        raise ConfigError(
            "train.samples",
            f"this run would take about {seconds / 3600:,.0f} h on this machine ({device}; "
            f"the limit is {MAX_HOURS:g} h): lower train.samples (now "
            f"{config.train.samples:,}; about {most:,} fit){gpu}",
        )
    return seconds


def check_world(world: WorldConfig) -> None:
    """Every world size lays out in seconds now (the search, or past its budget the decorrelation): nothing
    to refuse; kept for callers that checked the world alone."""


def check_config(config: ExperimentConfig, device: str = "cpu") -> None:
    """Everything about a config that can be refused before training: memory, then time."""
    check_memory(config)
    check_time(config, device)


def _field_value(config: ExperimentConfig, field: str):
    section, *rest = field.split(".")
    if section == "sae":
        label, name = rest
        return getattr(next(s for s in config.sae if s.label == label), name)
    return getattr(getattr(config, section), rest[0])


def _gib(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
