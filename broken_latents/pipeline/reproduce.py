"""`broken-latents reproduce`: every registered experiment, then one report claim by claim."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..output.terminal import make_console

from ..config.schema import ExperimentConfig
from ..experiments import EXPERIMENTS, Experiment
from ..experiments.claims import seeds_needed
from ..analysis.metrics import ClaimResult
from ..output.report import HtmlSection, anchor, claims_table, render_html
from .resolve import Target
from .run import run_experiment

QUICK_SAMPLES = 30_000_000
"""--quick caps every experiment's budget at this many samples per SAE, its aux and inverse
schedules shrunk in proportion, and draws no figures. Measured against the full run: 10% of every
budget (the first --quick) left the plain experiments (20-30M samples) unconverged and agreed with
the full verdicts on 36/52 claims in 0.42 of its time; the plain experiments cost little to train
(about 25 s of the full run's 400 s of training) and much to draw (7 s of figures per run
directory), so they keep their budgets and lose their figures, and the 150M aux-loss experiments
train on 30M (the schedule the post's 50M + 50M delay and warm-up become is 10M + 10M)."""
QUICK_GEOMETRIES = 2
"""--quick checks an experiment over at most this many world seeds: with all five, the 30M cap
still took 0.38 of the full run's time (4.0 of 10.6 min, idle), with the same 50/52 verdicts."""


def scaled(config: ExperimentConfig, seeds: int, factor: float) -> ExperimentConfig:
    """The same experiment with `seeds` seeds and every sample budget times `factor`."""

    def schedule(table):  # the aux loss's and the inverse technique's sample counts
        if table is None:
            return None
        return dataclasses.replace(
            table,
            delay_samples=int(table.delay_samples * factor),
            warmup_samples=int(table.warmup_samples * factor),
            refit_samples=max(int(table.refit_samples * factor), 1),
        )

    saes = [
        dataclasses.replace(sae, aux=schedule(sae.aux), inverse=schedule(sae.inverse))
        for sae in config.sae
    ]
    train = dataclasses.replace(
        config.train, seeds=seeds, samples=max(int(config.train.samples * factor), 1)
    )
    return dataclasses.replace(config, train=train, sae=saes)


def reproduce_all(
    seeds: int,
    out: Path,
    quick: bool,
    device: str,
    progress: bool,
    experiments: dict[str, Experiment] | None = None,
) -> Path:
    """Run each experiment into out/NAME, then write out/report.md and out/report.html."""
    console = make_console(stderr=True)
    experiments = (
        {n: e for n, e in EXPERIMENTS.items() if e.reproduced}
        if experiments is None
        else experiments
    )
    out = Path(out)
    started = time.perf_counter()
    results = []
    for i, (name, exp) in enumerate(experiments.items(), 1):
        factor = min(1.0, QUICK_SAMPLES / exp.config.train.samples) if quick else 1.0
        config = scaled(exp.config, seeds, factor)
        geometries = min(exp.geometries, QUICK_GEOMETRIES) if quick else exp.geometries
        where = f" x {geometries} world seeds" if geometries > 1 else ""
        console.print(
            f"[{i}/{len(experiments)}] {name}: {config.train.samples:,} samples x {seeds} seeds{where}"
        )
        for geometry in range(geometries):
            geometry_config = with_world_seed(config, geometry) if exp.geometries > 1 else config
            target = Target(geometry_config, exp.claims, exp.clean_cos, name)
            outcome = run_experiment(
                target,
                out / geometry_dir(name, geometry),
                device=device,
                progress=progress,
                figures="none" if quick else "first",
            )
            held = sum(c.holds for c in outcome.metrics.claims)
            console.print(
                f"    {geometry_dir(name, geometry)}: {outcome.metrics.wall_seconds:.0f} s, "
                f"claims holding: {held}/{len(exp.claims)}"
            )
            results.append((name, geometry, outcome))
    summary = _summary(results, seeds, quick, time.perf_counter() - started)
    shown = [
        (name, o) for name, geometry, o in results if geometry == 0
    ]  # one section per experiment
    (out / "report.md").write_text(
        summary + "\n\n" + "\n\n".join(_section_markdown(name, o) for name, o in shown)
    )
    sections = [HtmlSection(summary, out)] + [
        HtmlSection(_experiment_markdown(o), o.directory) for _, o in shown
    ]
    (out / "report.html").write_text(
        render_html(sections, "broken-latents: reproduction of the post"), encoding="utf-8"
    )
    console.print(f"report: {out / 'report.html'} and {out / 'report.md'}")
    return out


def with_world_seed(config: ExperimentConfig, seed: int) -> ExperimentConfig:
    return dataclasses.replace(config, world=dataclasses.replace(config.world, seed=seed))


def geometry_dir(name: str, geometry: int) -> str:
    """World seed 0 keeps the experiment's own directory; the others sit beside it."""
    return name if geometry == 0 else f"{name}-world-seed-{geometry}"


def pooled_claims(outcomes: list) -> list[ClaimResult]:
    """The claims of one experiment over every world seed: seeds held are added up, a claim holds
    when it holds in two thirds of all (geometry, seed) runs, and the detail says in which
    geometries it held."""
    if len(outcomes) == 1:
        return outcomes[0].metrics.claims
    pooled = []
    for i, first in enumerate(outcomes[0].metrics.claims):
        per_geometry = [o.metrics.claims[i] for o in outcomes]
        held = sum(c.seeds_held for c in per_geometry)
        run = sum(c.seeds_run for c in per_geometry)
        by_geometry = ", ".join(
            f"world seed {g}{_max_cos(o.metrics.world)}: {c.seeds_held}/{c.seeds_run}"
            for g, (o, c) in enumerate(zip(outcomes, per_geometry))
        )
        pooled.append(
            dataclasses.replace(
                first,
                seeds_held=held,
                seeds_run=run,
                holds=held >= seeds_needed(run),
                per_seed=[ok for c in per_geometry for ok in c.per_seed],
                detail=f"{sum(c.holds for c in per_geometry)}/{len(outcomes)} geometries held; {by_geometry}",
            )
        )
    return pooled


def _summary(results, seeds: int, quick: bool, seconds: float) -> str:
    rows = []
    experiments = list(dict.fromkeys(name for name, _, _ in results))
    for name in experiments:
        outcomes = [o for n, _, o in results if n == name]
        rows += [
            (name, dataclasses.replace(claim, text=f'{claim.text} (post: "{claim.post}")'))
            for claim in pooled_claims(outcomes)
        ]
    walls = "; ".join(
        f"{geometry_dir(name, g)} {o.metrics.wall_seconds:.0f} s" for name, g, o in results
    )
    budget = (
        (
            f"**quick**: budgets capped at {QUICK_SAMPLES / 1e6:.0f}M samples per SAE, at most {QUICK_GEOMETRIES} "
            "world seeds per experiment and no figures (`reproduce` without --quick runs the post's budgets)"
        )
        if quick
        else "the post's budgets"
    )
    return "\n\n".join(
        [
            "# broken-latents: the post's claims, reproduced",
            f"{len(experiments)} experiments, {seeds} seeds each, {budget}; total wall time {seconds / 60:.1f} min ({walls}).",
            "A claim holds overall when it holds in at least two thirds of the seeds; `detail` gives the first seed's "
            "numbers and, if any seed failed, the first failing seed's. An experiment run over several world seeds "
            "(feature geometries) pools their seeds, and its detail gives the count per geometry.",
            "## Contents",
            _contents(rows),
            "## Summary",
            claims_table(
                [claim for _, claim in rows], [f"[{name}](#{anchor(name)})" for name, _ in rows]
            ),
        ]
    )


def _contents(rows: list[tuple[str, ClaimResult]]) -> str:
    """A line per experiment, linked to its section, with each claim's verdict linked to its claims table."""
    lines = []
    for name in dict.fromkeys(experiment for experiment, _ in rows):
        claims = ", ".join(
            f"[{c.id} {c.seeds_held}/{c.seeds_run} {'holds' if c.holds else 'fails'}]"
            f"(#{anchor(name)}--claims)"
            for experiment, c in rows
            if experiment == name
        )
        lines.append(f"- [{name}](#{anchor(name)}): {claims}")
    return "\n".join(lines)


def _experiment_markdown(outcome) -> str:
    return (outcome.directory / "report.md").read_text()


def _section_markdown(name: str, outcome) -> str:
    """The experiment's own report, demoted one heading level, with image paths made relative to out/."""
    text = _experiment_markdown(outcome).replace("](figures/", f"]({name}/figures/")
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def _max_cos(world) -> str:
    """ " (max |cos| 0.123)", or nothing for runs written before metrics.json gave it."""
    return "" if world.max_feature_cos is None else f" (max |cos| {world.max_feature_cos:.3f})"
