"""`broken-latents reproduce`: every registered experiment, then one report claim by claim."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from rich.console import Console

from .config import ExperimentConfig
from .experiments import EXPERIMENTS, Experiment
from .output.report import HtmlSection, claims_table, render_html
from .output.rundir import run_experiment

QUICK_FACTOR = 0.1
"""--quick trains every SAE on this share of its budget (aux delay and warm-up scale alike)."""


def scaled(config: ExperimentConfig, seeds: int, factor: float) -> ExperimentConfig:
    """The same experiment with `seeds` seeds and every sample budget times `factor`."""
    saes = [
        dataclasses.replace(sae, aux=dataclasses.replace(
            sae.aux, delay_samples=int(sae.aux.delay_samples * factor), warmup_samples=int(sae.aux.warmup_samples * factor),
        )) if sae.aux else sae
        for sae in config.sae
    ]
    train = dataclasses.replace(config.train, seeds=seeds, samples=max(int(config.train.samples * factor), 1))
    return dataclasses.replace(config, train=train, sae=saes)


def reproduce_all(seeds: int, out: Path, quick: bool, device: str, progress: bool,
                  experiments: dict[str, Experiment] | None = None) -> Path:
    """Run each experiment into out/NAME, then write out/report.md and out/report.html."""
    console = Console(stderr=True)
    experiments = EXPERIMENTS if experiments is None else experiments
    out = Path(out)
    started = time.perf_counter()
    results = []
    for i, (name, exp) in enumerate(experiments.items(), 1):
        config = scaled(exp.config, seeds, QUICK_FACTOR if quick else 1.0)
        console.print(f"[{i}/{len(experiments)}] {name}: {config.train.samples:,} samples x {seeds} seeds")
        outcome = run_experiment(config, exp.claims, out / name, device=device, progress=progress, clean_cos=exp.clean_cos)
        held = sum(c["holds"] for c in outcome.metrics["claims"])
        console.print(f"    {outcome.metrics['wall_seconds']:.0f} s, claims holding: {held}/{len(exp.claims)}")
        results.append((name, outcome))
    summary = _summary(results, seeds, quick, time.perf_counter() - started)
    (out / "report.md").write_text(summary + "\n\n" + "\n\n".join(_section_markdown(name, o) for name, o in results))
    sections = [HtmlSection(summary, out)] + [HtmlSection(_experiment_markdown(o), o.directory) for _, o in results]
    (out / "report.html").write_text(render_html(sections, "broken-latents: reproduction of the post"), encoding="utf-8")
    console.print(f"report: {out / 'report.html'} and {out / 'report.md'}")
    return out


def _summary(results, seeds: int, quick: bool, seconds: float) -> str:
    rows = []
    for name, outcome in results:
        for claim in outcome.metrics["claims"]:
            rows.append({**claim, "experiment": name, "text": f"{claim['text']} (post: \"{claim['post']}\")"})
    walls = "; ".join(f"{name} {o.metrics['wall_seconds']:.0f} s" for name, o in results)
    budget = "quick budgets (10% of the post's)" if quick else "the post's budgets"
    return "\n\n".join([
        "# broken-latents: the post's claims, reproduced",
        f"{len(results)} experiments, {seeds} seeds each, {budget}; total wall time {seconds / 60:.1f} min ({walls}).",
        "A claim holds overall when it holds in at least two thirds of the seeds; `detail` gives the first seed's "
        "numbers and, if any seed failed, the first failing seed's.",
        "## Summary",
        claims_table(rows),
    ])


def _experiment_markdown(outcome) -> str:
    return (outcome.directory / "report.md").read_text()


def _section_markdown(name: str, outcome) -> str:
    """The experiment's own report, demoted one heading level, with image paths made relative to out/."""
    text = _experiment_markdown(outcome).replace("](figures/", f"]({name}/figures/")
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
