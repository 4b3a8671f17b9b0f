"""Large worlds against SAELens, in one run on this machine: sampling inputs/s and training samples/s
of a width-1024 BatchTopK SAE at 2048 and 4096 features in 256 dims, and our training as a share of
this CPU's measured sgemm rate.

    .venv/bin/python benchmarks/bench_scale.py                 # `make bench` runs it after bench.py
    .venv/bin/python benchmarks/bench_scale.py --quick         # tiny budgets: a smoke check
    .venv/bin/python benchmarks/bench_scale.py --saelens-python /path/to/venv/bin/python
    .venv/bin/python benchmarks/bench_scale.py --sizes 2048          # one world size only

SAELens runs in its own venv (default /work/saelens-venv; sae-lens pins other versions than ours)
through benchmarks/saelens_scale_bench.py, by subprocess; without that venv its rows say so.
Each figure is measured once, rows one after another: on a machine other work shares, say so
beside the numbers (the header records the load average before and after).

Both worlds have SynthSAEBench-16k's laws with the roots scaled to the size
(`experiments.synthbench.synthbench_world`: Zipf firing, tree, copula correlation, folded-normal
spread, bias). Ours trains with `train.engine = "auto"` (on a sparse world the sparse-latent
gradients, training/engines.py) while a second thread samples; a shorter run by autograd gives
the column before them.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broken_latents.config.schema import (  # noqa: E402
    ExperimentConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.experiments.synthbench import synthbench_world  # noqa: E402
from broken_latents.training.engines import choose_engine  # noqa: E402
from broken_latents.training.loop import single_torch_thread, train  # noqa: E402
from broken_latents.world.model import World  # noqa: E402
from broken_latents.world.stream import DataStream  # noqa: E402

SIZES = (2048, 4096)
DIM, LATENTS, K, BATCH = 256, 1024, 32, 1024
SAELENS_PYTHON = Path("/work/saelens-venv/bin/python")
HERE = Path(__file__).resolve().parent


def our_sampling(world: World, seconds: float) -> tuple[float, float]:
    """Inputs x [B, D] per second from our stream on one thread (firing lists drawn, x formed), and
    the mean true L0."""
    stream = DataStream(world, [0], BATCH, "cpu", offset=3)
    stream.next()  # warm-up (loads or compiles the sampler)
    drawn, l0, started = 0, [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        l0.append(float(stream.next().l0_R()[0]))
        drawn += BATCH
    rate = drawn / (time.perf_counter() - started)
    stream.close()
    return rate, sum(l0) / len(l0)


def our_training(world_cfg: WorldConfig, samples: int, engine: str = "auto") -> tuple[float, str]:
    """(samples/s, the engine's name) of the BatchTopK SAE trained on `world_cfg`."""
    config = ExperimentConfig(
        name="bench-scale",
        world=world_cfg,
        train=TrainConfig(
            samples=samples, batch_size=BATCH, lr=3e-4, seeds=1, eval_samples=1000, engine=engine
        ),
        sae=[
            SAEConfig(
                label="batchtopk",
                architecture="untied",
                latents=LATENTS,
                activation="batchtopk",
                k=K,
                l1=0.0,  # as SAELens' BatchTopK, which has no L1 term
            )
        ],
    )
    return train(config, progress=False).samples_per_second, choose_engine(config, "cpu").name


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
        "--sizes",
        type=int,
        nargs="+",
        default=list(SIZES),
        metavar="FEATURES",
        help=f"world sizes to measure (default {' '.join(map(str, SIZES))})",
    )
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
    for features in args.sizes:
        world_cfg = synthbench_world(features, DIM)
        world = World.build(world_cfg)
        with single_torch_thread("cpu"):  # one BLAS thread, as the sampling thread has in training
            sampling, l0 = our_sampling(world, seconds)
        training, engine = our_training(world_cfg, samples)
        before, _ = our_training(world_cfg, max(samples // 10, 2 * BATCH), "autograd")
        theirs = saelens_row(args.saelens_python, features, args.quick)
        rows.append((features, sampling, training, before, l0, theirs))
        print(features, sampling, training, before, l0, theirs, flush=True)
    load_after = os.getloadavg()[0]
    encoder_bound = (
        max(gflops.values()) * 1e9 / (2 * DIM * LATENTS)
    )  # the faster thread count's rate
    lines = [
        "# broken-latents at scale against SAELens",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; {os.cpu_count()} cores; 1-minute load "
        f"average {load_before:.1f} before, {load_after:.1f} after"
        + (
            " (other work shared the machine: every figure is lower than on an idle one)"
            if max(load_before, load_after) > 1.5
            else ""
        ),
        f"- torch {torch.__version__}; sgemm [1024x256]x[256x1024] float32: {gflops[1]:.0f} GFLOP/s on 1 thread, "
        f"{gflops[2]:.0f} on 2; at the faster, the encoder product alone (2 x 256 x 1024 FLOP a sample) bounds training "
        f"at {encoder_bound:,.0f} samples/s (the share below: our training / that bound)",
        f"- world: `synthbench_world(features, {DIM})` (SynthSAEBench-16k's laws, roots scaled); SAELens: the "
        "same laws in `sae_lens.synthetic` (benchmarks/saelens_scale_bench.py)",
        f"- SAE: untied BatchTopK, {LATENTS} latents, k {K}, batch {BATCH}, lr 3e-4; our training {samples:,} "
        f"samples with engine `{engine}` (sampling in a second thread, a helper thread sharing the encoder "
        f"product and Adam where that measures faster), autograd {max(samples // 10, 2 * BATCH):,}; "
        "each measured once" + (" (--quick: the figures mean nothing)" if args.quick else ""),
        "",
        "| features | sampling inputs/s ours | SAELens | x | training samples/s ours | SAELens | x "
        "| ours by autograd | share of sgemm bound | true L0 ours / SAELens |",
        "|" + "---|" * 10,
    ]
    notes = []
    for features, sampling, training, before, l0, theirs in rows:
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
            notes.append(f"{features} features: SAELens {theirs}")
        lines.append(
            f"| {features} | {sampling:,.0f} | {their[0]} | {their[1]} | {training:,.0f} | {their[2]} | "
            f"{their[3]} | {before:,.0f} | {training / encoder_bound:.1%} | {l0:.1f} / {their[4]} |"
        )
    lines += [""] + [f"- {note}" for note in notes]
    text = "\n".join(lines) + "\n"
    print(text)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
