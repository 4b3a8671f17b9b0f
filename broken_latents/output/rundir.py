"""Write a run directory, atomically, from a trained result and its metrics.

Everything is written into a hidden sibling folder first and moved into place only when it is
complete, so a failed or interrupted write never leaves a DIR that looks finished, and a previous
run at DIR is replaced only by a complete new one. (Training and measuring happen before, in
`pipeline.run.run_experiment`.)
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Literal

from safetensors.torch import save_file

import numpy as np

from ..analysis.measure import Trained
from ..config.schema import ConfigError, ExperimentConfig
from ..config.toml_io import dump_toml
from ..analysis.metrics import Metrics, save_arrays
from .plots import loss_curves, write_run_figures
from .report import detail_seeds, render_markdown, write_html
from ..files.atomic import folder_in_place
from .saelens_format import write_saelens


def check_replaceable(out: Path, marker: str, earlier: str, earlier_plural: str) -> None:
    """Refuse a DIR that holds something other than an earlier output of ours (which holds
    `marker`): writing would replace it. `earlier`: what such an output is called ("a previous run
    directory"); `earlier_plural`: the same as the path to choose instead ("an earlier run's directory")."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise ConfigError(
            "--out",
            f"{out} exists and is not {earlier} (no {marker}); "
            f"choose a new path or {earlier_plural} to replace",
        )


def check_out_dir(out: Path) -> None:
    """Refuse a DIR that holds something other than a previous run: we would replace it."""
    check_replaceable(out, "metrics.json", "a previous run directory", "an earlier run's directory")


def write_run(
    out: Path,
    config: ExperimentConfig,
    result: Trained,
    metrics: Metrics,
    started: float,
    figures: Literal["first", "all", "none"] = "first",
    activations: dict[str, np.ndarray] | None = None,
) -> None:
    """Write DIR from a trained result and its metrics (claims included). figures: "first" draws the
    seeds the report details (the first, and the first where a claim failed); "all" draws and details
    every seed; "none" draws nothing (a quick reproduction: the report keeps its tables).
    `activations`: held-out latent activations by "LABEL-seedN" for the histograms (needed unless
    figures is "none"). `started`: when the run began (time.perf_counter()), for metrics.wall_seconds."""
    with folder_in_place(Path(out)) as partial:
        _write_directory(partial, config, result, metrics, started, figures, activations or {})


def _write_directory(
    path: Path,
    config: ExperimentConfig,
    result: Trained,
    metrics: Metrics,
    started: float,
    which_figures: str,
    activations: dict[str, np.ndarray],
) -> None:
    (path / "weights").mkdir()
    config_toml = dump_toml(config)
    (path / "config.toml").write_text(config_toml)
    for stack in result.stacks:
        for s, seed in enumerate(result.seeds):
            tensors = stack.sae.saelens_tensors(s, stack.tau_SK)
            save_file(
                {k: v.cpu().contiguous() for k, v in tensors.items()},
                str(path / "weights" / f"{stack.config.label}-seed{seed}.safetensors"),
            )
            write_saelens(
                path / "weights" / f"{stack.config.label}-seed{seed}",
                tensors,
                stack.config.activation,
                tied=stack.sae.tied_encoder,
                k=stack.config.k,
                metadata={"experiment": config.name, "label": stack.config.label, "seed": seed},
            )
    # Figures for the seeds the report shows in detail (the first, and the first that failed a
    # claim): drawing every seed of a 10-seed run would take longer than training it.
    shown = (
        detail_seeds(metrics.runs, metrics.claims or [])
        if which_figures != "all"
        else set(result.seeds)
    )
    history = result.history.to_json()
    (path / "history.json").write_text(json.dumps(history))
    figures: dict[str, list[str]] = {}
    if which_figures != "none":
        drawn = dataclasses.replace(metrics, runs=[r for r in metrics.runs if r.seed in shown])
        figures = write_run_figures(drawn, activations, path / "figures")
        if history["steps"]:
            loss_curves(
                history,
                f"{config.name}: loss terms while training",
                path / "figures" / "loss-curves.png",
            )
            figures["training"] = ["figures/loss-curves.png"]
    metrics.wall_seconds = round(time.perf_counter() - started, 3)
    report = render_markdown(metrics, figures, shown, config_toml)
    (path / "report.md").write_text(report)
    write_html(path / "report.html", f"broken-latents: {config.name}", report, path)
    save_arrays(metrics, path)  # large matrices to arrays/*.npy; metrics.json names them
    # metrics.json last: its presence marks a complete run directory.
    (path / "metrics.json").write_text(json.dumps(metrics.to_json(), indent=1))
