"""Training throughput and peak memory of broken-latents against a plain PyTorch baseline.

    .venv/bin/python benchmarks/bench.py            # full run, ~3.5 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench.py --quick    # tiny budgets: a smoke check, not a measurement
    .venv/bin/python benchmarks/bench.py --only narrow  # the rows whose world or engine/config say so

Every figure comes from this one run. Each row trains in its own fresh process, once in each
of three passes (the best is kept), so each gets its own peak RSS and nothing warmed up by one
row helps the next. The processes are forked from a server that has already imported torch
and the package (multiprocessing's "forkserver"): a cold interpreter spends ~3 s importing
torch, which would double the run and make --quick impossible. The peak RSS is therefore
that of a process holding torch and the package as imported, without the import's
transient peak (a cold start reads about 55-60 MiB higher, on every row alike).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from baseline import run_baseline
from broken_latents.config.schema import (
    AuxConfig,
    ExperimentConfig,
    HierarchyConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.training.loop import train
from sae_lens_toy import run_sae_lens

NARROW = WorldConfig(
    features=20, dim=50, firing={"linear": [0.02, 0.3]}, magnitude={"linear": [20.0, 1.0]}
)
WORLDS = {
    "narrow": NARROW,
    "5,7 -> 12": replace(
        NARROW, hierarchy=[HierarchyConfig(parent=12, children=[5, 7], mode="force")]
    ),
}
LATENTS, L1 = 5, 3e-3

# (engine, SAEs, batch, samples per SAE): budgets that take 1-3 s each on 2 idle cores.
CONFIGS = [
    ("baseline", 1, 1024, 500_000),
    ("auto", 1, 1024, 3_000_000),
    ("auto", 1, 4096, 6_000_000),
    ("auto", 16, 1024, 500_000),
    ("arrays", 1, 1024, 1_000_000),
    ("autograd", 1, 1024, 500_000),
    ("sae_lens", 1, 1024, 500_000),
]
MATRYOSHKA_WIDTHS = (1, LATENTS)
"""The Matryoshka row: a tied SAE with these nested widths on the narrow world, beside the plain
tied SAE of the same run (target: at least half its samples/s)."""
MATRYOSHKA_SAMPLES = 3_000_000
# Other work on a shared machine slows a row by up to 30x (the baseline's two torch threads the
# most), and this VM's own speed swings up to 2x from one second to the next (the same kernel
# call measured 0.67 ms, then 1.26 ms), so every row runs in three passes and keeps its best.
REPEATS = 3
MEMORY_BUDGETS = (2_000_000, 8_000_000)
QUICK_SAMPLES = 4 * 4096  # a few steps of every row
BUSY_LOAD = 0.7  # 1-minute load average above which other work has skewed the figures
ENGINE_NAMES = {
    "baseline": "plain PyTorch",
    "auto": "broken-latents",
    "autograd": "broken-latents autograd",
    "arrays": "broken-latents, torch array path",
    "sae_lens": "SAELens train_toy_sae",
}
SAE_LENS_INSTALLED = importlib.util.find_spec("sae_lens") is not None


@dataclass(frozen=True)
class Row:
    world: str
    engine: str
    saes: int
    batch: int
    aux: bool
    samples: int
    """Samples per SAE."""
    widths: tuple[int, ...] | None = None
    """Matryoshka widths, or None for a plain SAE."""


def table_rows(quick: bool) -> list[Row]:
    rows = []
    for world in WORLDS:
        for aux in (False, True):
            for engine, saes, batch, samples in CONFIGS:
                if engine == "sae_lens" and aux:
                    continue  # SAELens has no activation-orthogonality loss
                rows.append(
                    Row(world, engine, saes, batch, aux, QUICK_SAMPLES if quick else samples)
                )
                if world == "narrow" and (engine, saes, batch) == ("auto", 1, 1024):
                    rows.append(
                        Row(
                            world,
                            engine,
                            saes,
                            batch,
                            aux,
                            QUICK_SAMPLES if quick else MATRYOSHKA_SAMPLES,
                            MATRYOSHKA_WIDTHS,
                        )
                    )
    return rows


def memory_rows(quick: bool) -> list[Row]:
    budgets = (QUICK_SAMPLES, 4 * QUICK_SAMPLES) if quick else MEMORY_BUDGETS
    return [Row("narrow", "auto", 1, 1024, False, samples) for samples in budgets]


# ---------------------------------------------------------------------------------------
# one row, in its own process


def experiment(row: Row) -> ExperimentConfig:
    # Aux on from the first step at full strength, as in the baseline.
    aux = AuxConfig(delay_samples=0, warmup_samples=0) if row.aux else None
    return ExperimentConfig(
        name="bench",
        world=WORLDS[row.world],
        train=TrainConfig(
            samples=row.samples, batch_size=row.batch, seeds=row.saes, engine=row.engine
        ),
        sae=[
            SAEConfig(
                label="tied",
                latents=LATENTS,
                l1=L1,
                aux=aux,
                matryoshka_widths=list(row.widths) if row.widths else None,
            )
        ],
    )


def measure(row: Row, device: str) -> tuple[float, float]:
    """Train `row` in this process; return (aggregate samples/s, peak RSS of this process in MiB)."""
    world = WORLDS[row.world]
    if row.engine == "baseline":
        speed = run_baseline(
            world, LATENTS, row.samples, row.aux, l1=L1, batch_size=row.batch, device=device
        )
    elif row.engine == "sae_lens":
        speed = run_sae_lens(
            world, LATENTS, row.samples, l1=L1, batch_size=row.batch, device=device
        )
    else:
        # "arrays": the same hand-derived gradients as ~40 torch calls a step (the GPU's engine),
        # to show what compiling them brings on the CPU.
        speed = train(experiment(row), device=device, progress=False).samples_per_second
    return speed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_all(
    rows: list[Row], device: str, repeats: int, console: Console
) -> list[tuple[float, float] | None]:
    """Best samples/s and highest peak RSS of each row over `repeats` passes, one fresh process per
    row and pass; None for a row whose library is not installed."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["torch", "rich.table", "broken_latents.training.loop", "baseline", "sae_lens_toy"]
    )
    passes = []
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for n in range(repeats):
            results = []
            for row in rows:
                if row.engine == "sae_lens" and not SAE_LENS_INSTALLED:
                    results.append(None)
                    continue
                with console.status(
                    f"pass {n + 1}/{repeats}, {row.world}: {describe(row)}, aux {on_off(row.aux)}"
                ):
                    results.append(pool.submit(measure, row, device).result())
            passes.append(results)
    return [
        None if runs[0] is None else (max(s for s, _ in runs), max(m for _, m in runs))
        for runs in zip(*passes)
    ]


# ---------------------------------------------------------------------------------------
# report


def describe(row: Row) -> str:
    nested = f", Matryoshka {list(row.widths)}" if row.widths else ""
    return ENGINE_NAMES[row.engine] + nested + (" (lockstep)" if row.saes > 1 else "")


def main_table(
    measured: list[tuple[Row, tuple[float, float] | None]],
) -> tuple[list[str], list[list[str]]]:
    header = [
        "world",
        "engine / config",
        "SAEs",
        "batch",
        "aux",
        "samples/s",
        "vs baseline",
        "peak RSS MiB",
    ]
    baselines = {
        (row.world, row.aux): result[0] for row, result in measured if row.engine == "baseline"
    }
    cells = []
    for row, result in measured:
        config = [row.world, describe(row), str(row.saes), str(row.batch), on_off(row.aux)]
        if result is None:
            cells.append(config + ["not installed", "-", "-"])
        else:
            speed, rss = result
            baseline = baselines.get((row.world, row.aux))
            ratio = f"{speed / baseline:.2f}x" if baseline else "-"
            cells.append(config + [f"{speed:,.0f}", ratio, f"{rss:.0f}"])
    return header, cells


def memory_table(
    measured: list[tuple[Row, tuple[float, float]]],
) -> tuple[list[str], list[list[str]]]:
    header = [
        "world",
        "engine / config",
        "SAEs",
        "batch",
        "samples per SAE",
        "samples/s",
        "peak RSS MiB",
    ]
    cells = [
        [
            row.world,
            describe(row),
            str(row.saes),
            str(row.batch),
            f"{row.samples:,}",
            f"{speed:,.0f}",
            f"{rss:.0f}",
        ]
        for row, (speed, rss) in measured
    ]
    return header, cells


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


def machine_lines(device: str, quick: bool, repeats: int, load_at_start: float) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    gpu = f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""
    lines = [
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"CPU: {cpu}, {os.cpu_count()} cores; 1-minute load average before the run {load_at_start:.2f}",
        f"device: {device}{gpu}",
        f"torch {torch.__version__}, default threads {torch.get_num_threads()} (the baseline uses them;"
        " broken-latents runs 1 torch thread plus its sampling thread)",
        "budgets: --quick (a smoke check; the figures mean nothing)"
        if quick
        else f"budgets: 1-3 s per row, best of {repeats} passes; samples/s excludes start-up (loading the compiled kernels included);"
        " ratio vs the baseline of the same world and aux setting",
        f"sae-lens {importlib.metadata.version('sae-lens')}"
        if SAE_LENS_INSTALLED
        else "sae-lens not installed (pip install -e .[saelens] for its row)",
    ]
    if (
        load_at_start > BUSY_LOAD
    ):  # only before the run: during it the load is mostly this benchmark
        lines.append(
            "WARNING: the machine was busy just before the run; if other work kept running, the ratios"
            " are inflated (the baseline's two torch threads slow down the most when a core is taken)"
        )
    return lines


def rich_table(title: str, header: list[str], cells: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right")
    for row in cells:
        table.add_row(*row)
    return table


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, for a smoke check")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--out",
        type=Path,
        help="markdown results (default benchmarks/results.md; "
        "with --quick a file in the temp directory)",
    )
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="only the rows whose world or engine/config contain TEXT "
        "(e.g. 'Matryoshka', 'narrow'); no memory table",
    )
    args = parser.parse_args()
    partial = args.quick or args.only  # a smoke check or a few rows: never over the full results
    out = args.out or (
        Path(tempfile.gettempdir()) / "broken-latents-bench-partial.md"
        if partial
        else Path(__file__).with_name("results.md")
    )
    console = Console(
        width=None if sys.stdout.isatty() else 130
    )  # rich wraps at 80 columns in a pipe
    if args.device == "cuda" and not torch.cuda.is_available():
        console.print("CUDA is not available here; nothing to benchmark with --device cuda.")
        return

    load_at_start = os.getloadavg()[0]
    rows, mem_rows = table_rows(args.quick), memory_rows(args.quick)
    if args.only:
        rows = [row for row in rows if args.only in row.world or args.only in describe(row)]
        mem_rows = []
    repeats = 1 if args.quick else REPEATS
    measured = list(
        zip(rows + mem_rows, measure_all(rows + mem_rows, args.device, repeats, console))
    )
    tables = [
        ("Training throughput, side by side", *main_table(measured[: len(rows)])),
        ("Peak memory vs sample budget (should not grow)", *memory_table(measured[len(rows) :])),
    ][: 2 if mem_rows else 1]
    header_lines = machine_lines(args.device, args.quick, repeats, load_at_start)

    for line in header_lines:
        console.print(line, markup=False)  # "[saelens]" is not a style
    for title, header, cells in tables:
        console.print(rich_table(title, header, cells))
    markdown = ["# broken-latents benchmark", "", *[f"- {line}" for line in header_lines]]
    for title, header, cells in tables:
        markdown += ["", f"## {title}", "", markdown_table(header, cells)]
    out.write_text("\n".join(markdown) + "\n")
    console.print(f"written to {out}")


if __name__ == "__main__":
    main()
