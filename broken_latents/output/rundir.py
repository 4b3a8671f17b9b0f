"""Run an experiment into a run directory, atomically.

Everything is written into a hidden sibling folder first and moved into place only when the
run is complete, so a failed or interrupted run never leaves a DIR that looks finished, and
a previous run at DIR is replaced only by a complete new one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from safetensors.torch import save_file

from ..analysis.measure import latent_activations, measure
from ..experiments.claims import Claim, evaluate_claims
from ..config.schema import ConfigError, ExperimentConfig
from ..config.toml_io import dump_toml
from ..analysis.metrics import CLEAN_COS, Metrics
from .plots import loss_curves, write_run_figures
from .report import detail_seeds, render_markdown, write_html
from .atomic import swap_into_place
from .saelens_format import write_saelens
from ..training.loop import TrainResult, train

HISTOGRAM_SAMPLES = 50_000


@dataclass
class RunOutcome:
    directory: Path
    metrics: Metrics


def check_out_dir(out: Path) -> None:
    """Refuse a DIR that holds something other than a previous run: we would replace it."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "metrics.json").exists())):
        raise ConfigError("--out", f"{out} exists and is not a previous run directory (no metrics.json); "
                                   "choose a new path or an earlier run's directory to replace")


def run_experiment(config: ExperimentConfig, claims: list[Claim], out: Path, device: str = "cpu",
                   progress: bool = True, clean_cos: float = CLEAN_COS,
                   figures: Literal["first", "all", "none"] = "first") -> RunOutcome:
    """Train, measure, check the claims and write DIR. figures: "first" draws the seeds the report
    details (the first, and the first where a claim failed); "all" draws and details every seed;
    "none" draws nothing (a quick reproduction: the report keeps its tables)."""
    out = Path(out)
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        result = train(config, device=device, progress=progress)
        metrics = measure(result, clean_cos=clean_cos)
        metrics.description = config.description
        metrics.claims = evaluate_claims(claims, metrics)
        _write_directory(partial, config, result, metrics, started, figures)
        swap_into_place(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return RunOutcome(out, metrics)


def _write_directory(path: Path, config: ExperimentConfig, result: TrainResult, metrics: Metrics, started: float,
                     which_figures: str = "first") -> None:
    (path / "weights").mkdir(parents=True)
    config_toml = dump_toml(config)
    (path / "config.toml").write_text(config_toml)
    for stack in result.stacks:
        for s, seed in enumerate(result.seeds):
            tensors = stack.sae.saelens_state(s)
            if stack.config.activation in ("jumprelu", "batchtopk"):  # the threshold of h = pre * [pre > threshold]
                tensors["threshold"] = stack.sae.thresholds(stack.tau_SK)[s].detach().clone()
            save_file({k: v.cpu().contiguous() for k, v in tensors.items()},
                      str(path / "weights" / f"{stack.config.label}-seed{seed}.safetensors"))
            write_saelens(path / "weights" / f"{stack.config.label}-seed{seed}", tensors, stack.config.activation,
                          tied=stack.config.architecture == "tied", k=stack.config.k,
                          metadata={"experiment": config.name, "label": stack.config.label, "seed": seed})
    # Figures for the seeds the report shows in detail (the first, and the first that failed a
    # claim): drawing every seed of a 10-seed run would take longer than training it.
    shown = detail_seeds(metrics.runs, metrics.claims or []) if which_figures != "all" else set(result.seeds)
    history = result.history.to_json()
    (path / "history.json").write_text(json.dumps(history))
    figures: dict[str, list[str]] = {}
    if which_figures != "none":
        drawn = dataclasses.replace(metrics, runs=[r for r in metrics.runs if r.seed in shown])
        figures = write_run_figures(drawn, latent_activations(result, HISTOGRAM_SAMPLES), path / "figures")
        if history["steps"]:
            loss_curves(history, f"{config.name}: loss terms while training", path / "figures" / "loss-curves.png")
            figures["training"] = ["figures/loss-curves.png"]
    metrics.wall_seconds = round(time.perf_counter() - started, 3)
    report = render_markdown(metrics, figures, shown, config_toml)
    (path / "report.md").write_text(report)
    write_html(path / "report.html", f"broken-latents: {config.name}", report, path)
    # metrics.json last: its presence marks a complete run directory.
    (path / "metrics.json").write_text(json.dumps(metrics.to_json(), indent=1))
