"""Terminal tables of a run's metrics (rich)."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..analysis.metrics import CLEAN_COS, ClaimResult, Metrics, RunMetrics, WorldMetrics
from .describe import cos_text, world_line
from .report import SHOWN_ABSORPTION


SHOWN_ITEMS = 24
"""A cell lists at most this many latents or features; a large SAE's cell ends "... (N more)"."""


def _cut(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_ITEMS])
    return shown + (f", ... ({len(items) - SHOWN_ITEMS} more)" if len(items) > SHOWN_ITEMS else "")


def synthbench_table(metrics: Metrics) -> Table | None:
    """SynthSAEBench's metrics (SAELens' definitions) per SAE and seed; None for runs from before them."""
    runs = [run for run in metrics.runs if run.mcc is not None]
    if not runs:
        return None
    table = Table(
        title="SynthSAEBench metrics (SAELens' definitions): mcc, uniqueness, f1, precision, "
        "recall, sae_l0, true_l0, dead_count, shrinkage"
    )
    columns = (
        "mcc",
        "uniqueness",
        "f1",
        "precision",
        "recall",
        "sae_l0",
        "true_l0",
        "dead_count",
        "shrinkage",
    )
    table.add_column("SAE")
    table.add_column("seed")
    for header in (
        "MCC",
        "uniq",
        "F1",
        "prec",
        "rec",
        "L0",
        "true",
        "dead",
        "shrk",
    ):  # narrow: fits 80 columns
        table.add_column(header, justify="right")
    for run in runs:
        table.add_row(
            run.label,
            str(run.seed),
            *(
                f"{getattr(run, c):.2f}"
                if isinstance(getattr(run, c), float)
                else str(getattr(run, c))
                for c in columns
            ),
        )
    return table


def broken_latent_table(metrics: Metrics) -> Table:
    """One row per SAE and seed: what it learned, which latents are broken or dead, their peaks."""
    table = Table(title=f"{metrics.name}: latents per SAE and seed")
    for column in (
        "SAE",
        "seed",
        "learned features",
        "broken latents (best feature, cos)",
        "dead",
        "peaks",
        "EV",
    ):
        table.add_column(column)
    threshold = metrics.clean_cos or CLEAN_COS
    for run in metrics.runs:
        by_latent = {m.latent: m for m in run.matches}
        broken = _cut(
            [
                f"{j} (f{by_latent[j].feature}, {cos_text(by_latent[j].cos, threshold)})"
                for j in run.broken_latents
            ]
        )
        table.add_row(
            run.label,
            str(run.seed),
            _ints(run.learned_features),
            broken or "-",
            _ints(run.dead_latents) or "-",
            _ints(run.activation_peaks),
            f"{run.explained_variance:.3f}",
        )
    return table


def absorption_table(metrics: Metrics) -> Table | None:
    """One row per SAE and seed: features absorbed above SHOWN_ABSORPTION ("f1 (0.98, full 0.90)") and
    latents hedging above it ("0 (-0.45)"); None for runs from before these metrics."""
    runs = [run for run in metrics.runs if run.absorption is not None]
    if not runs:
        return None
    table = Table(title=f"absorption and hedging above {SHOWN_ABSORPTION}")
    for column in (
        "SAE",
        "seed",
        "absorbed features (absorption, full)",
        "hedging latents (signed)",
    ):
        table.add_column(column)
    for run in runs:
        absorbed = _cut(
            [
                f"f{i} ({a:.2f}, {run.full_absorption[i]:.2f})"
                for i, a in enumerate(run.absorption)
                if a > SHOWN_ABSORPTION
            ]
        )
        hedging = _cut(
            [f"{j} ({h:+.2f})" for j, h in enumerate(run.hedging) if abs(h) > SHOWN_ABSORPTION]
        )
        table.add_row(run.label, str(run.seed), absorbed or "-", hedging or "-")
    return table


def direction_table(metrics: Metrics) -> Table | None:
    """Runs on stored activations with directions: per SAE and seed, every direction's best |cos| with a
    live latent, learned ones starred ("d3 0.99*"); None for other runs."""
    runs = [run for run in metrics.runs if "per_direction" in run.extra]
    if not runs:
        return None
    threshold = metrics.clean_cos or CLEAN_COS
    table = Table(
        title=f"directions: best |cos| with a live latent (* learned: one-to-one at >= {threshold})"
    )
    for column in ("SAE", "seed", "learned", "best |cos| per direction"):
        table.add_column(column)
    for run in runs:
        records = run.extra["per_direction"]
        cells = [
            f"d{r['direction']} {cos_text(r['best_cos'], threshold)}{'*' if r['learned'] else ''}"
            for r in records
        ]
        learned = sum(r["learned"] for r in records)
        table.add_row(run.label, str(run.seed), f"{learned}/{len(records)}", _cut(cells))
    return table


def saebench_absorption_table(metrics: Metrics) -> Table | None:
    """SAEBench's absorption on the probe directions, beside the project's (runs on stored activations
    with labels); None for other runs."""
    runs = [run for run in metrics.runs if "saebench_absorption" in run.extra]
    if not runs:
        return None
    table = Table(
        title="absorption: SAEBench's (probe directions) and this project's (own directions), means"
    )
    for column in ("SAE", "seed", "SAEBench fraction", "SAEBench full", "ours", "ours full"):
        table.add_column(column)
    for run in runs:
        saebench = run.extra["saebench_absorption"]

        def text(value) -> str:
            return "-" if value is None else f"{value:.3f}"

        table.add_row(
            run.label,
            str(run.seed),
            text(saebench["mean_absorption_fraction"]),
            text(saebench["mean_full_absorption"]),
            text(float(np.mean(run.absorption))) if run.absorption else "-",
            text(float(np.mean(run.full_absorption))) if run.full_absorption else "-",
        )
    return table


def claims_summary(claims: list[ClaimResult]) -> Table:
    table = Table(title="claims")
    for column in ("claim", "what is checked", "seeds held", "holds"):
        table.add_column(column)
    for claim in claims:
        mark = Text("yes", "green") if claim.holds else Text("no", "red")
        table.add_row(claim.id, claim.text, f"{claim.seeds_held}/{claim.seeds_run}", mark)
    return table


FAR_FROM_WELCH = 1.25
"""Max |cos| above this multiple of the Welch bound is worth a warning (the bound is exact only for
some sizes; for many features in few dims no arrangement reaches it)."""


def geometry_line(world: WorldMetrics) -> Text | None:
    """How close a world in superposition came to the least possible interference; None when
    orthogonal (bound 0) or from before the bound was recorded."""
    bound, worst = world.welch_bound, world.max_feature_cos
    if not bound or worst is None:
        return None
    line = f"features in superposition: max |cos| {worst:.4f}, Welch bound {bound:.4f} ({worst / bound:.2f}x)"
    if worst > FAR_FROM_WELCH * bound:
        return Text.assemble(
            ("warning", "yellow"),
            f": {line}: the directions interfere more than the bound allows for",
        )
    return Text(line)


SHOWN_FEATURES = 12
"""A decoder table with more columns than this shows the world's top features by expected MSE only."""
SHOWN_LATENTS = 32
"""A larger SAE's decoder table shows the latents best matched to the features shown (at most this many)."""


def decoder_table(run: RunMetrics, top_features: list[int], threshold: float = CLEAN_COS) -> Table:
    """Decoder cosines of one SAE with the features it cares about most (digits enough to tell which side
    of the clean threshold each lies); a large SAE: of the SHOWN_LATENTS latents with the largest |cos|
    with those features."""
    decoder_KF = run.matrix("decoder_cos")
    latents = range(decoder_KF.shape[0])
    title = f"{run.label} seed {run.seed}: decoder cos (latent x feature)"
    if decoder_KF.shape[0] > SHOWN_LATENTS:
        best_K = np.abs(np.asarray(decoder_KF[:, top_features], dtype=float)).max(axis=1)
        latents = sorted(np.argsort(-best_K, kind="stable")[:SHOWN_LATENTS].tolist())
        title += f", the {SHOWN_LATENTS} of {decoder_KF.shape[0]} latents closest to these features"
    table = Table(title=title)
    table.add_column("latent")
    for f in top_features:
        table.add_column(f"f{f}", justify="right")
    for j in latents:
        row = {f: float(decoder_KF[j, f]) for f in top_features}
        cells = [
            Text(cos_text(row[f], threshold, signed=True), "bold" if abs(row[f]) >= 0.5 else "")
            for f in top_features
        ]
        table.add_row(str(j), *cells)
    return table


def show_run(metrics: Metrics, console: Console) -> None:
    console.print(Text.assemble((metrics.name, "bold"), f"  {metrics.description or ''}"))
    wall_seconds = 0.0 if metrics.wall_seconds is None else metrics.wall_seconds
    console.print(
        f"{metrics.samples:,} samples per SAE; {wall_seconds:.1f} s; "
        f"{metrics.samples_per_second / 1e6:.2f}M samples/s over all SAEs"
    )
    console.print(world_line(metrics.world), soft_wrap=True)
    if geometry := geometry_line(metrics.world):
        console.print(geometry)
    console.print(broken_latent_table(metrics))
    if synthbench := synthbench_table(metrics):
        console.print(synthbench)
    if warnings := convergence_warnings(metrics):
        console.print(warnings)
    if absorption := absorption_table(metrics):
        console.print(absorption)
    if directions := direction_table(metrics):
        console.print(directions)
    if saebench := saebench_absorption_table(metrics):
        console.print(saebench)
    if metrics.claims:
        console.print(claims_summary(metrics.claims))
    ranking = metrics.world.expected_mse_ranking
    first_seed = min(
        (run.seed for run in metrics.runs), default=None
    )  # no runs: nothing to tabulate
    for run in metrics.runs:
        if run.seed == first_seed:
            wanted = sorted(set(ranking[:8]) | {m.feature for m in run.matches})
            if len(wanted) > SHOWN_FEATURES:  # a large world: the features that matter most
                wanted = sorted(ranking[:SHOWN_FEATURES])
            console.print(decoder_table(run, wanted, metrics.clean_cos or CLEAN_COS))


def convergence_warnings(metrics: Metrics) -> Text | None:
    """One warning per SAE and seed whose loss was still falling at the end of training; None if none was."""
    from .report import convergence_notes

    notes = convergence_notes(metrics)
    if not notes:
        return None
    text = Text()
    for i, note in enumerate(notes):
        text.append(("\n" if i else "") + "warning", "yellow")
        text.append(f": {note}")
    return text


def _ints(values: list[int]) -> str:
    return _cut([str(v) for v in values])
