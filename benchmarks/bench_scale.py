"""Large worlds against SAELens, in one run on this machine: sampling inputs/s and training samples/s
of a width-1024 BatchTopK SAE at 2048 and 4096 features in 256 dims, and our training as a share of
this CPU's measured sgemm rate.

    .venv/bin/python benchmarks/bench_scale.py                 # `make bench` runs it after bench.py
    .venv/bin/python benchmarks/bench_scale.py --quick         # tiny budgets: a smoke check
    .venv/bin/python benchmarks/bench_scale.py --saelens-python /path/to/venv/bin/python

SAELens runs in its own venv (default /work/saelens-venv; sae-lens pins other versions than ours)
through benchmarks/saelens_scale_bench.py, by subprocess; without that venv its rows say so.
Each figure is measured once, rows one after another: on a machine other work shares, say so
beside the numbers (the header records the load average before and after).

Our world: SynthSAEBench-16k's laws where this version has them (zipf firing 0.4 -> 5e-4,
exponent 0.5; magnitudes 5 -> 4 with spread 0.5); where it has no zipf law yet, the same
Zipf rates as a plain list (SAELens' formula), noted in the row. A world whose direction search
is over the preflight budget gets random unit directions here (noted): directions change neither
the cost of sampling nor of training.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broken_latents.config.schema import (  # noqa: E402
    ConfigError,
    ExperimentConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.training import preflight  # noqa: E402
from broken_latents.world import model as world_model  # noqa: E402
from broken_latents.world.model import World  # noqa: E402
from broken_latents.world.stream import DataStream  # noqa: E402

SIZES = (2048, 4096)
DIM, LATENTS, K, BATCH = 256, 1024, 32, 1024
ZIPF = {"exponent": 0.5, "max": 0.4, "min": 5e-4}
SAELENS_PYTHON = Path("/work/saelens-venv/bin/python")
HERE = Path(__file__).resolve().parent


def zipf_rates(features: int) -> list[float]:
    """SAELens' zipfian_firing_probabilities: 1 / rank^exponent rescaled onto [min, max]."""
    r = 1.0 / np.arange(1, features + 1, dtype=np.float64) ** ZIPF["exponent"]
    return (
        ZIPF["min"] + (ZIPF["max"] - ZIPF["min"]) * (r - r.min()) / (r.max() - r.min())
    ).tolist()


def supported(**law) -> bool:
    """Whether this version builds a (tiny) world with the given world keys."""
    try:
        World.build(WorldConfig(features=8, dim=8, **law))
        return True
    except (ConfigError, TypeError, ValueError, KeyError):
        return False


def world_config(features: int) -> tuple[WorldConfig, list[str]]:
    notes = []
    firing: object = {"zipf": dict(ZIPF)}
    if not supported(firing=firing):
        firing = zipf_rates(features)
        notes.append("zipf rates as a list (no zipf law in this version)")
    spread: object = {"folded_normal": {"mean": 0.5, "std": 0.5}}
    if not supported(magnitude_std=spread):
        spread = 0.5
        notes.append(
            "magnitude spread: normal std 0.5 clipped at 0 (no folded normal in this version)"
        )
    config = WorldConfig(
        features=features,
        dim=DIM,
        firing=firing,
        magnitude={"linear": [5.0, 4.0]},
        magnitude_std=spread,
        seed=0,
    )
    return config, notes


class RandomDirections:
    """Replaces the direction search while a too-large world is built (see the module docstring)."""

    def __init__(self, config: WorldConfig):
        self.needed = preflight.search_work(config) > preflight.SEARCH_BUDGET
        self.original = world_model.feature_directions

    def __enter__(self):
        if self.needed:

            def random_unit(features, dim, seed, *args, **kwargs):
                d = torch.randn(features, dim, generator=torch.Generator().manual_seed(seed))
                return d / d.norm(dim=1, keepdim=True)

            world_model.feature_directions = random_unit
        return self

    def __exit__(self, *exc):
        world_model.feature_directions = self.original


def our_sampling(world: World, seconds: float) -> tuple[float, float]:
    """Inputs x [B, D] per second from our stream (firings drawn, then x = f F), and the mean L0."""
    stream = DataStream(world, [0], BATCH, "cpu", offset=3)
    batch = stream.next()
    world.inputs(batch)  # warm-up (compiles the sampler on a first run)
    drawn, l0, started = 0, 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = stream.next()
        world.inputs(batch)
        drawn += BATCH
    rate = drawn / (time.perf_counter() - started)
    f = batch.features_RNB() if hasattr(batch, "features_RNB") else batch
    l0 = float((f > 0).sum(dim=-2).float().mean())
    stream.close()
    return rate, l0


def our_training(world_cfg: WorldConfig, samples: int) -> float:
    config = ExperimentConfig(
        name="bench-scale",
        world=world_cfg,
        train=TrainConfig(samples=samples, batch_size=BATCH, lr=3e-4, seeds=1, eval_samples=1000),
        sae=[
            SAEConfig(
                label="batchtopk",
                architecture="untied",
                latents=LATENTS,
                activation="batchtopk",
                k=K,
            )
        ],
    )
    from broken_latents.training.loop import train

    return train(config, progress=False).samples_per_second


def sgemm_rate(threads: int, seconds: float = 2.0) -> float:
    """GFLOP/s of a [1024, 256] x [256, 1024] float32 matmul (one encoder product of a batch)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(BATCH, DIM), torch.randn(DIM, LATENTS)
    torch.mm(a, b)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        n += 1
    elapsed = time.perf_counter() - started
    torch.set_num_threads(before)
    return 2 * BATCH * DIM * LATENTS * n / elapsed / 1e9


def saelens_row(python: Path, features: int, quick: bool) -> dict | str:
    if not python.exists():
        return f"skipped: no SAELens venv at {python}"
    command = [
        str(python),
        str(HERE / "saelens_scale_bench.py"),
        "--features",
        str(features),
        "--dim",
        str(DIM),
        "--latents",
        str(LATENTS),
        "--k",
        str(K),
        "--batch",
        str(BATCH),
    ]
    if quick:
        command += ["--sample-seconds", "0.5", "--train-samples", str(4 * BATCH)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--saelens-python", type=Path, default=SAELENS_PYTHON)
    parser.add_argument("--train-samples", type=int, default=300_000)
    parser.add_argument(
        "--out",
        type=Path,
        help="markdown results (default benchmarks/results-scale.md; "
        "with --quick a file in the temp directory)",
    )
    args = parser.parse_args()
    out = args.out or (
        Path(tempfile.gettempdir()) / "broken-latents-bench-scale.md"
        if args.quick
        else HERE / "results-scale.md"
    )
    samples = 8 * BATCH if args.quick else args.train_samples
    seconds = 0.5 if args.quick else 4.0
    load_before = os.getloadavg()[0]
    gflops = {threads: sgemm_rate(threads, 0.3 if args.quick else 2.0) for threads in (1, 2)}
    rows = []
    for features in SIZES:
        world_cfg, notes = world_config(features)
        with RandomDirections(world_cfg) as patch:
            if patch.needed:
                notes.append("random unit directions (search over budget)")
            world = World.build(world_cfg)
            sampling, l0 = our_sampling(world, seconds)
            training = our_training(world_cfg, samples)
        theirs = saelens_row(args.saelens_python, features, args.quick)
        rows.append((features, sampling, training, l0, notes, theirs))
        print(features, sampling, training, l0, notes, theirs, flush=True)
    load_after = os.getloadavg()[0]
    encoder_bound = gflops[2] * 1e9 / (2 * DIM * LATENTS)
    lines = [
        "# broken-latents at scale against SAELens",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; {os.cpu_count()} cores; 1-minute load "
        f"average {load_before:.1f} before, {load_after:.1f} after"
        + (
            " (other work shared the machine: every figure is lower than on an idle one)"
            if load_before > 1
            else ""
        ),
        f"- torch {torch.__version__}; sgemm [1024x256]x[256x1024] float32: {gflops[1]:.0f} GFLOP/s on 1 thread, "
        f"{gflops[2]:.0f} on 2; the encoder product alone then bounds training at {encoder_bound:,.0f} samples/s",
        f"- SAE: untied BatchTopK, {LATENTS} latents, k {K}, batch {BATCH}, lr 3e-4, {DIM} dims; our training "
        f"{samples:,} samples, measured once"
        + (" (--quick: the figures mean nothing)" if args.quick else ""),
        "",
        "| features | sampling inputs/s ours | SAELens | x | training samples/s ours | SAELens | x "
        "| ours / encoder sgemm bound | true L0 ours / SAELens | notes |",
        "|" + "---|" * 10,
    ]
    for features, sampling, training, l0, notes, theirs in rows:
        if isinstance(theirs, dict):
            their = [
                f"{theirs['sampling']:,.0f}",
                f"{sampling / theirs['sampling']:.1f}x",
                f"{theirs['training']:,.0f}",
                f"{training / theirs['training']:.1f}x",
                f"{theirs['true_l0']:.1f}",
            ]
        else:
            their = ["-", "-", "-", "-", "-"]
            notes = notes + [f"SAELens {theirs}"]
        lines.append(
            f"| {features} | {sampling:,.0f} | {their[0]} | {their[1]} | {training:,.0f} | {their[2]} | "
            f"{their[3]} | {training / encoder_bound:.1%} | {l0:.1f} / {their[4]} | {'; '.join(notes) or '-'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
