"""Bench: a 16-cell sweep on the local process pool against a loop of `broken-latents run` over the
same cells, measured in one run. Prints cells/s of each and their ratio, and checks that both give
the same claim verdicts cell by cell.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sweep.py [--samples N] [--seeds N] [--workers N]

Both sides start from a fresh process, as a user would: the sweep as one `broken-latents sweep`
command, the loop as 16 `broken-latents run` commands one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from broken_latents.analysis.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PARENT_RATES = [0.15, 0.2, 0.25, 0.3]
CHILD_RATES = [0.02, 0.05, 0.1, 0.15]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "broken_latents.cli", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, default=1_000_000, help="training samples per SAE in each cell"
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: the cores)")
    options = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    fixed = {"train.samples": options.samples, "train.eval_samples": 20_000}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as scratch:
        root = Path(scratch)
        spec = root / "spec.toml"
        spec.write_text(
            "\n".join(
                [
                    'base = "recap-absorption"',
                    f"seeds = {options.seeds}",
                    "[set]",
                    *(f'"{k}" = {v}' for k, v in fixed.items()),
                    "[axes]",
                    f'"world.firing[0]" = {PARENT_RATES}',
                    f'"world.firing[1]" = {CHILD_RATES}',
                    "",
                ]
            )
        )
        cells = len(PARENT_RATES) * len(CHILD_RATES)
        print(
            f"{cells} cells: recap-absorption, {options.samples:,} samples x {options.seeds} seeds x 2 SAEs each; "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
        )

        started = time.perf_counter()
        workers = ["--workers", str(options.workers)] if options.workers else []
        subprocess.run(
            cli("sweep", str(spec), "--out", str(root / "pool"), *workers),
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pool_seconds = time.perf_counter() - started

        started = time.perf_counter()
        loop_claims = []
        for i, parent in enumerate(PARENT_RATES):
            for j, child in enumerate(CHILD_RATES):
                out = root / "loop" / f"{i}-{j}"
                sets = [f"{k}={v}" for k, v in fixed.items()] + [
                    f"world.firing[0]={parent}",
                    f"world.firing[1]={child}",
                ]
                subprocess.run(
                    cli(
                        "run",
                        "recap-absorption",
                        "--out",
                        str(out),
                        "--seeds",
                        str(options.seeds),
                        *[a for s in sets for a in ("--set", s)],
                    ),
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                metrics = Metrics.from_json(json.loads((out / "metrics.json").read_text()))
                loop_claims.append({c.id: c.seeds_held for c in metrics.claims})
        loop_seconds = time.perf_counter() - started

        record = json.loads((root / "pool" / "sweep.json").read_text())
        pool_claims = [
            {cid: c["held"] for cid, c in cell["claims"].items()} for cell in record["cells"]
        ]
        same = pool_claims == loop_claims
        print(
            f"pool ({options.workers or os.cpu_count()} workers): {pool_seconds:6.1f} s  {cells / pool_seconds:.3f} cells/s"
        )
        print(f"loop of `run`:      {loop_seconds:6.1f} s  {cells / loop_seconds:.3f} cells/s")
        print(
            f"ratio: {loop_seconds / pool_seconds:.2f}x  (target >= 1.6x); same verdicts in every cell: {same}"
        )
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
