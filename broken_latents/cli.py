"""`broken-latents`: list, run, reproduce, show, sweep, inspect. Flags come from the function signatures (tyro).

Bad input of any kind ends in one line naming the field and what is allowed, exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from . import experiments
from .config.schema import ConfigError
from .analysis.metrics import Metrics, read_metrics
from .training.termination import termination
from .training.loop import TrainingDiverged
from .output.terminal import make_console, styled

console = make_console()
err_console = make_console(stderr=True)


def list_experiments() -> None:
    """List the registered experiments, one line each."""
    width = max(len(name) for name in experiments.EXPERIMENTS)
    for name, exp in experiments.EXPERIMENTS.items():
        print(f"{name:<{width}}  {exp.config.description}")


def run(
    target: tyro.conf.Positional[str],
    out: Optional[Path] = None,
    seeds: Optional[int] = None,
    samples: Optional[int] = None,
    device: Literal["cpu", "cuda"] = "cpu",
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = (),
    figures: Literal["first", "all"] = "first",
) -> None:
    """Train an experiment (a registered name or a .toml path) and write its run directory.

    Args:
        target: registered experiment name (see `list`) or path to a .toml config.
        out: run directory (default runs/NAME); an earlier run there is replaced once this one completes.
        seeds: number of seeds (overrides train.seeds).
        samples: training samples per SAE (overrides train.samples).
        device: cpu, or cuda when a GPU is present.
        set: override any config key, KEY=VALUE, repeatable (e.g. --set train.lr=1e-3 --set sae.tied.l1=0.01).
        figures: first: figures and details for the first seed and the first that failed a claim; all: every seed.
    """
    from .pipeline.resolve import budget, resolve_target
    from .pipeline.run import run_experiment

    target = resolve_target(target, [*budget(seeds, samples), *set])
    config = target.config
    for unused in (note for sae in config.sae for note in sae.unused_settings()):
        console.print(f"note: {unused}")
    out = out or Path("runs") / config.name
    outcome = run_experiment(  # checks everything that can be refused before it trains
        target, out, device=device, progress=sys.stderr.isatty(), figures=figures
    )
    _print_summary(outcome.metrics, outcome.directory)
    registered = experiments.EXPERIMENTS.get(config.name)
    if registered is not None and registered.geometries > 1:
        console.print(
            f"note: these claims depend on the feature geometry; this run used world seed {config.world.seed}. "
            f"`reproduce` checks world seeds 0-{registered.geometries - 1}; try --set world.seed=N for others."
        )


def reproduce(
    seeds: int = 3,
    out: Path = Path("reproduction"),
    quick: bool = False,
    device: Literal["cpu", "cuda"] = "cpu",
) -> None:
    """Re-run every registered experiment and write one report (report.md and report.html).

    Args:
        seeds: seeds per experiment.
        out: folder for the experiments' run directories and the report.
        quick: scale every budget down to finish in a few minutes on 2 cores.
        device: cpu, or cuda when a GPU is present.
    """
    if seeds < 1:
        raise ConfigError("--seeds", f"must be >= 1, got {seeds}")
    from .pipeline.reproduce import reproduce_all
    from .pipeline.resolve import check_device
    from .training.preflight import check_writable

    check_device(device)
    check_writable(out / "report.md")

    reproduce_all(seeds=seeds, out=out, quick=quick, device=device, progress=sys.stderr.isatty())


def sweep(
    spec: tyro.conf.Positional[Path],
    out: Optional[Path] = None,
    workers: Optional[int] = None,
    ray: Optional[str] = None,
) -> None:
    """Train a grid of runs (a sweep spec .toml) and map where each claim holds and each chosen metric's mean.

    Exit code 0: every cell done; 1: some cells failed in training (rerun to retry them); 2: the spec is
    refused, or gives some cells a config that is refused (reported as invalid; the other cells still run).

    Args:
        spec: sweep spec: base experiment, seeds, claims, metrics, [set] fixed overrides, [axes] the grid.
        out: sweep directory (default sweeps/SPEC-NAME); rerunning into it skips finished cells.
        workers: cells trained at once by the local process pool (default: the cores).
        ray: run every cell as a Ray task: 'auto' (an existing cluster, else a local one) or a cluster ADDRESS.
    """
    from .sweeps import run_sweep

    try:
        outcome = run_sweep(spec, out=out, workers=workers, ray=ray, progress=True)
    except KeyboardInterrupt:
        err_console.print(
            "interrupted; the finished cells are kept: rerun the same command to resume"
        )
        sys.exit(130)
    if any(cell.invalid for cell in outcome.failed):
        sys.exit(
            2
        )  # the spec gave some cells a config that is refused: an input error, as in `run`
    if outcome.failed:
        sys.exit(1)


def show(run_dir: tyro.conf.Positional[Path]) -> None:
    """Print a run directory's tables in the terminal."""
    from .output.show import show_run

    path = run_dir / "metrics.json"
    if not path.is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} is not a run directory (no metrics.json)")
    show_run(read_metrics(path, "RUN_DIR"), console)


def inspect(
    sae: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="SAE")]],
    activations: Annotated[Path, tyro.conf.arg(metavar="FILE")],
    key: Optional[str] = None,
    out: Optional[Path] = None,
    limit: Optional[int] = None,
) -> None:
    """Find latents that look broken (several activation peaks) in an SAE trained anywhere.

    Args:
        sae: a SAELens folder (cfg.json + sae_weights.safetensors) or a run's weights/LABEL-seedN.safetensors.
        activations: a .npy or .safetensors file of activations [N, D], read in chunks.
        key: the tensor to read from a .safetensors file (not needed when it holds one).
        out: output folder (default inspect/NAME); an earlier inspect folder there is replaced once this one completes.
        limit: read at most this many samples.
    """
    from .inspect.detect import inspect_sae, print_summary

    _check_not_run_directory(sae)
    outcome = inspect_sae(
        sae, activations, key=key, out=out, limit=limit, progress=sys.stderr.isatty()
    )
    print_summary(outcome, console)


def _check_not_run_directory(sae: Path) -> None:
    """`inspect runs/x` names a whole run: list the SAEs under its weights/ to pick one from."""
    weights = sae / "weights"
    if not sae.is_dir() or (sae / "cfg.json").is_file() or not weights.is_dir():
        return
    choices = sorted(
        {
            *(p for p in weights.iterdir() if p.is_dir() and (p / "cfg.json").is_file()),
            *weights.glob("*.safetensors"),
        }
    )
    listed = ", ".join(str(p) for p in choices) or f"none ({weights} holds no SAE)"
    raise ConfigError(
        "SAE", f"{sae} is a run directory, not one SAE; pick one of its SAEs: {listed}"
    )


def _print_summary(metrics: Metrics, directory: Path) -> None:
    from .output.describe import world_line
    from .output.show import (
        broken_latent_table,
        claims_summary,
        convergence_warnings,
        geometry_line,
    )

    console.print(world_line(metrics.world), soft_wrap=True)
    if geometry := geometry_line(metrics.world):
        console.print(geometry)
    console.print(broken_latent_table(metrics))
    if warnings := convergence_warnings(metrics):
        sys.stdout.flush()  # the warning comes after the table it is about, on a terminal or in a log
        err_console.print(warnings)
    if metrics.claims:
        console.print(claims_summary(metrics.claims))
    console.print(
        f"{metrics.samples:,} samples per SAE in {metrics.wall_seconds:.1f} s "
        f"({metrics.samples_per_second / 1e6:.2f}M samples/s over all SAEs)"
    )
    console.print(
        f"run directory: {directory}  (report: {directory / 'report.html'} and report.md, figures: {directory / 'figures'})"
    )


def _check_set_arguments(argv: list[str]) -> None:
    """`--set KEY VALUE` (a space, not '=') would reach tyro as a stray word: explain the form instead."""
    for i, arg in enumerate(argv):
        if arg != "--set":
            continue
        key = argv[i + 1] if i + 1 < len(argv) else None
        if key is None or key.startswith("--"):
            raise ConfigError("--set", "expects KEY=VALUE, e.g. --set train.lr=1e-3")
        if "=" not in key:
            value = (
                argv[i + 2] if i + 2 < len(argv) and not argv[i + 2].startswith("--") else "VALUE"
            )
            value = argv[i + 3] if value == "=" and i + 3 < len(argv) else value
            raise ConfigError(
                "--set",
                f"expects KEY=VALUE as one argument, got {key!r}: write --set {key}={value}",
            )
        if key.endswith("=") and i + 2 < len(argv) and not argv[i + 2].startswith("--"):
            raise ConfigError(
                "--set",
                f"expects KEY=VALUE as one argument with no space after '=': "
                f"write --set {key}{argv[i + 2]}",
            )


def _version() -> str:
    from . import __version__  # the code running, installed or not

    return __version__


def _stop_writing_to_closed_pipe() -> None:
    """`broken-latents list | head -3`: the reader closed the pipe, which is no error of ours. Point
    stdout at /dev/null so the interpreter's last flush cannot fail, and exit quietly (Python's
    documented recipe for SIGPIPE)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    commands = {
        "list": list_experiments,
        "run": run,
        "reproduce": reproduce,
        "show": show,
        "sweep": sweep,
        "inspect": inspect,
    }
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--version"], ["-V"]):
        print(f"broken-latents {_version()}")
        return
    # A terminated run unwinds like an interrupted one, so its partial directory is removed.
    termination.install()
    try:
        _check_set_arguments(args)
        tyro.extras.subcommand_cli_from_dict(commands, prog="broken-latents", args=args)
        sys.stdout.flush()  # a reader that went away (`| head`) shows here, not at interpreter exit
    except BrokenPipeError:
        _stop_writing_to_closed_pipe()
    except (ConfigError, TrainingDiverged) as err:
        err_console.print(styled(("error", "bold red"), f": {err}"), soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; nothing was written")
        sys.exit(130)


if __name__ == "__main__":
    main()
