"""The sparse sampler alone, load-robust: inputs per CPU-second of `SparseSampler.draw(1024)` on one
thread (`time.thread_time`, so other jobs on the machine do not count), on `synthbench_world(features,
256)`, optionally beside the sampler of an earlier git revision in the same process, rounds alternating.

    .venv/bin/python benchmarks/bench_sampler.py                      # ours at 2048 and 4096 features
    .venv/bin/python benchmarks/bench_sampler.py --against 3d983bd    # and the sampler of that commit
    /work/saelens-venv/bin/python benchmarks/bench_sampler.py --saelens   # SAELens' model.sample, 1 thread

The other revision's world/sparse.py is loaded as a module of this package (its imports are relative), so
it runs on today's worlds; a revision whose sampler needs other modules than today's will not load.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault(
    "OPENBLAS_NUM_THREADS", "1"
)  # one BLAS thread, as the sampling thread in training
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH, DIM = 1024, 256


def sampler_at(revision: str):
    """world/sparse.py of `revision`, imported as broken_latents.world.sparse_<revision>."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(
        ["git", "show", f"{revision}:broken_latents/world/sparse.py"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"sparse_{revision}.py"
    path.write_text(text)
    name = f"broken_latents.world.sparse_{revision}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def per_cpu_second(draw, seconds: float) -> float:
    """Inputs per CPU-second of draw(BATCH)."""
    draw(BATCH)  # loads or compiles
    drawn, started = 0, time.thread_time()
    while time.thread_time() - started < seconds:
        draw(BATCH)
        drawn += BATCH
    return drawn / (time.thread_time() - started)


def saelens(sizes: list[int], seconds: float, rounds: int) -> None:
    import torch
    from saelens_scale_bench import model_config
    from sae_lens.synthetic import SyntheticModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    for features in sizes:
        model = SyntheticModel(model_config(features, DIM), device="cpu")
        rates = [per_cpu_second(model.sample, seconds) for _ in range(rounds)]
        print(
            f"{features} features: SAELens {sorted(rates)[len(rates) // 2]:,.0f} inputs per CPU-second"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="a git revision whose sampler runs beside ours")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument(
        "--seconds", type=float, default=0.7, help="CPU seconds per round and sampler"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--saelens", action="store_true", help="time SAELens instead (run in its venv)"
    )
    args = parser.parse_args()
    if args.saelens:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        saelens(args.sizes, args.seconds, args.rounds)
        return
    import torch

    from broken_latents.experiments.synthbench import synthbench_world
    from broken_latents.world import sparse
    from broken_latents.world.model import World

    torch.set_num_threads(1)
    modules = {"ours": sparse} | ({args.against: sampler_at(args.against)} if args.against else {})
    for features in args.sizes:
        world = World.build(synthbench_world(features, DIM))
        samplers = {label: m.SparseSampler(world, [0], offset=3) for label, m in modules.items()}
        rates = {label: [] for label in samplers}
        for _ in range(args.rounds):
            for label, sampler in samplers.items():
                rates[label].append(per_cpu_second(sampler.draw, args.seconds))
        median = {label: sorted(r)[len(r) // 2] for label, r in rates.items()}
        line = f"{features} features: ours {median['ours']:,.0f} inputs per CPU-second"
        if args.against:
            line += f", {args.against} {median[args.against]:,.0f} (x{median['ours'] / median[args.against]:.2f})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
