"""Figures of a run: cosine heatmaps, activation histograms, the world's feature profile (PNG)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window or need a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: E402

from ..analysis.metrics import CLEAN_COS, Metrics, PeakModelRecord, RunMetrics  # noqa: E402
from .describe import cos_text  # noqa: E402
from ..analysis.peaks import mixture_density  # noqa: E402

CELL_INCHES = 0.5
"""Side of one heatmap cell: room for a two-decimal value in a small font."""
HIST_FLOOR = 0.1  # show a little below analysis.peaks.PEAK_FLOOR, where peaks start to count
"""Histograms show activations above this fraction of the latent's max, as the peak counter does
(tied latents fire weakly on most inputs, and that bulk near zero would hide the peaks)."""
HIST_BINS = 100
HIGHLIGHT = "tab:orange"
DPI = 110
TOP_LATENTS = 64
"""An SAE with more latents, or a world with more features, than this is drawn by its top latents:
the TOP_LATENTS that fire most on the held-out samples (by decoder norm when there are no
activations) against their best-matching features, never its full K x F table (a 1024 x 2048
canvas of cells does not fit in memory)."""
TOP_HISTOGRAMS = 16
"""Histogram panels drawn for an SAE drawn by its top latents (the 16 that fire most)."""
VALUES_UP_TO = 32
"""Heatmaps with more rows or columns than this leave out the value written in each cell."""
PROFILE_FEATURES = 64
"""A world with more features than this gets its profile without a tick per feature."""


def cos_heatmap(
    matrix,
    title: str,
    path: str | Path,
    row_label: str = "latent",
    col_label: str = "feature",
    row_marks: dict[int, str] | None = None,
    col_marks: dict[int, str] | None = None,
    boxes: dict[tuple[int, int], str] | None = None,
    threshold: float = CLEAN_COS,
    row_ids: Sequence[int] | None = None,
    col_ids: Sequence[int] | None = None,
) -> None:
    """Cosines in a fixed -1..1 diverging scale, so colours compare across figures and runs. Values near
    `threshold` get the digits to tell their side. `row_marks` / `col_marks`: a word after a tick label
    ("broken", "dead", "parent"), coloured by MARK_COLOURS; `boxes`: (row, col) -> a mark whose colour
    outlines that cell (a latent's matched feature). row_ids / col_ids: the latents / features the rows
    and columns are (default 0, 1, ...; marks and boxes are by position)."""
    cos_RC = np.asarray(matrix, dtype=float)
    rows, cols = cos_RC.shape
    row_marks, col_marks, boxes = row_marks or {}, col_marks or {}, boxes or {}
    values = rows <= VALUES_UP_TO and cols <= VALUES_UP_TO
    cell = CELL_INCHES if values else CELL_INCHES / 2.5
    # Cells keep their size whatever the shape; the margins hold labels, title and colour bar.
    fig, ax = plt.subplots(figsize=(cell * cols + 2.2, cell * rows + 1.4))
    image = ax.imshow(cos_RC, cmap="RdBu_r", vmin=-1, vmax=1, aspect="equal")
    if values:
        _write_cell_values(ax, cos_RC, threshold)
    for (r, c), mark in boxes.items():
        ax.add_patch(
            plt.Rectangle(
                (c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor=MARK_COLOURS[mark], linewidth=2.2
            )
        )
    row_names = [str(j) for j in (range(rows) if row_ids is None else row_ids)]
    col_names = [str(i) for i in (range(cols) if col_ids is None else col_ids)]
    ax.set_xticks(
        range(cols),
        [_marked(c, col_marks, col_names[c]) for c in range(cols)],
        rotation=90 if col_marks or not values else 0,
    )
    ax.set_yticks(range(rows), [_marked(r, row_marks, row_names[r]) for r in range(rows)])
    for label, index in zip(ax.get_xticklabels(), range(cols)):
        label.set_color(MARK_COLOURS.get(col_marks.get(index), "black"))
    for label, index in zip(ax.get_yticklabels(), range(rows)):
        label.set_color(MARK_COLOURS.get(row_marks.get(index), "black"))
    ax.tick_params(labelsize=8 if values else 5, length=0)
    key = _key_text(boxes, row_marks, col_marks)
    ax.set_xlabel(col_label + ("\n" + "\n".join(textwrap.wrap(key, 60)) if key else ""), fontsize=9)
    ax.set_ylabel(row_label)
    ax.set_title(title, fontsize=10)
    # An axis cut from the heatmap's own box keeps the colour bar exactly as tall as the cells.
    bar_ax = make_axes_locatable(ax).append_axes("right", size=0.15, pad=0.1)
    fig.colorbar(image, cax=bar_ax).ax.tick_params(labelsize=7)
    _save(fig, path)


MARK_COLOURS = {"broken": "tab:red", "dead": "grey", "clean": "tab:green", "parent": "tab:purple"}
"""Colours of the heatmaps' marks: a broken latent, a dead one, a clean match, a parent feature."""


def _marked(index: int, marks: dict[int, str], name: str | None = None) -> str:
    name = str(index) if name is None else name  # the latent or feature at that position
    return f"{name} {marks[index]}" if index in marks else name


def _key_text(boxes: dict, row_marks: dict, col_marks: dict) -> str:
    """What the marks mean, written under the heatmap."""
    parts = []
    if boxes:
        parts.append("boxes: each latent's matched feature (green clean, red broken)")
    if any(m in ("broken", "dead") for m in row_marks.values()):
        parts.append("red labels: broken latents, grey: dead")
    if col_marks:
        parts.append("purple: parent features (hierarchy)")
    return "; ".join(parts)


def latent_marks(run: RunMetrics) -> dict[int, str]:
    """Latent -> "broken" or "dead", for tick labels."""
    return {**{j: "broken" for j in run.broken_latents}, **{j: "dead" for j in run.dead_latents}}


def latent_cos_heatmap(
    matrix, title: str, path: str | Path, marks: dict[int, str] | None = None
) -> None:
    """Latent-latent cosines: off-diagonal colour means latents share directions."""
    cos_heatmap(
        matrix,
        title,
        path,
        row_label="latent",
        col_label="latent",
        row_marks=marks,
        col_marks=marks,
    )


def activation_histograms(
    acts,
    peak_locations: Sequence[Sequence[float]],
    title: str,
    path: str | Path,
    peak_models: Sequence[PeakModelRecord] = (),
    latent_ids: Sequence[int] | None = None,
) -> None:
    """One panel per latent: activations above HIST_FLOOR of its max (the share left out is written
    on the panel), the fitted peak model's mixture over them, its peaks dashed and its threshold
    dotted. One peak is a clean latent; several peaks are features mixed into it (broken)."""
    models = {m.latent: m for m in peak_models}
    acts_BK = np.asarray(acts, dtype=float)
    latents = acts_BK.shape[1]
    ids = (
        list(range(latents)) if latent_ids is None else [int(j) for j in latent_ids]
    )  # column -> latent
    rows = math.ceil(latents / HIST_COLUMNS)
    cols = math.ceil(latents / rows)  # 4 latents: 2 rows of 2 rather than 3 + 1
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 2.6 * rows + 0.8), squeeze=False, layout="constrained"
    )
    for j, ax in enumerate(axes.flat):
        if j < latents:
            latent = ids[j]
            _latent_panel(
                ax,
                latent,
                acts_BK[:, j],
                peak_locations[latent] if latent < len(peak_locations) else [],
                models.get(latent),
            )
        else:
            ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.legend(
        handles=_histogram_legend(),
        loc="outside lower center",
        ncol=min(4, 2 * cols),
        fontsize=7,
        frameon=False,
    )
    _save(fig, path)


HIST_COLUMNS = 3
"""Histogram panels per row: at 3.4 inches each the figure is ~1100 px wide, the report page's width,
so a panel is shown at full size instead of shrunk."""


def _histogram_legend() -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Patch(color="tab:blue", alpha=0.6, label="activations (count, log scale)"),
        Line2D([], [], color="black", linewidth=0.9, label="fitted peak model (Gaussian mixture)"),
        Line2D([], [], color="tab:red", linestyle="--", linewidth=0.9, label="peak"),
        Line2D(
            [], [], color="tab:green", linestyle=":", linewidth=1.1, label="threshold between peaks"
        ),
    ]


def world_profile(
    expected_mse, rates, magnitudes, title: str, path: str | Path, highlight: Sequence[int] = ()
) -> None:
    """Magnitude, firing probability and expected MSE (p * m^2) per feature; an SAE with K
    latents should learn the K features with the largest expected MSE (`highlight`)."""
    panels = [
        ("magnitude", magnitudes),
        ("firing probability\n(marginal)", rates),
        ("expected MSE = p·m²", expected_mse),
    ]
    features = len(expected_mse)
    ticks = features <= PROFILE_FEATURES
    fig, axes = plt.subplots(
        3, 1, sharex=True, figsize=(max(5.0, 0.35 * features + 1.5) if ticks else 12.0, 6.0)
    )
    top = set(highlight)
    colours = [HIGHLIGHT if i in top else "tab:blue" for i in range(features)]
    for ax, (name, values) in zip(axes, panels):
        if ticks:
            ax.bar(range(features), values, color=colours)
        else:  # thousands of bars: a step line per panel, the top features as dots
            ax.plot(range(features), values, color="tab:blue", linewidth=0.6)
            shown = sorted(top)
            ax.scatter(shown, np.asarray(values)[shown], s=2, color=HIGHLIGHT)
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    if ticks:
        axes[-1].set_xticks(range(features))
    axes[-1].set_xlabel("feature")
    if highlight:
        title += f"\n(orange: top {len(highlight)} by expected MSE)"
    axes[0].set_title(title, fontsize=10)
    _save(fig, path)


def loss_curves(history: dict, title: str, path: str | Path) -> None:
    """One panel per loss term (history.json's layout), a line per SAE and seed; log y, samples on x.
    A seed whose curve sits apart from its siblings' trained differently, not just noisily."""
    names = list(dict.fromkeys(name for run in history["runs"] for name in run["terms"]))
    if not names:
        return
    steps = np.asarray(history["steps"], dtype=float)
    labels = list(dict.fromkeys(run["label"] for run in history["runs"]))
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(
        1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False, layout="constrained"
    )
    for ax, name in zip(axes[0], names):
        for run in history["runs"]:
            values = run["terms"].get(name)
            if values is None:
                continue
            y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
            y[y <= 0] = np.nan  # a log axis cannot show 0 (e.g. an L1 of silent latents)
            seed_rank = [r["seed"] for r in history["runs"] if r["label"] == run["label"]].index(
                run["seed"]
            )
            ax.plot(
                steps,
                y,
                color=colours[run["label"]],
                linestyle=styles[seed_rank % len(styles)],
                linewidth=1.0,
                label=f"{run['label']} seed {run['seed']}",
            )
        ax.set_yscale("log")
        ax.set_xlabel("samples seen (per SAE)", fontsize=8)
        ax.set_ylabel(f"{name} (batch mean)", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7, which="both")
        ax.grid(alpha=0.3, which="both")
    # One legend for every panel (each panel has the same lines), beside them rather than over a curve.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside right upper",
        fontsize=7,
        title="SAE and seed",
        title_fontsize=7,
    )
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def write_run_figures(
    metrics: Metrics, activations: dict[str, np.ndarray], figures_dir: str | Path
) -> dict[str, list[str]]:
    """Every figure of a run; returns run key ("LABEL-seedN", and "world") -> file names
    relative to figures_dir's parent (the run directory, where report.md lives)."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)

    def relative(name: str) -> str:
        return f"{figures_dir.name}/{name}"

    # Stored activations have no sampled world (no expected MSE) to draw.
    written = (
        {"world": [relative(_world_figure(metrics, figures_dir))]}
        if metrics.world.expected_mse
        else {}
    )
    parents = {rel["parent"] for rel in metrics.world.hierarchy or []}
    for run in metrics.runs:
        key = f"{run.label}-seed{run.seed}"
        written[key] = [
            relative(name)
            for name in _run_figures(
                run, key, activations.get(key), figures_dir, parents, metrics.clean_cos or CLEAN_COS
            )
        ]
    return written


def top_latents(run: RunMetrics, acts: np.ndarray | None, count: int | None = None) -> np.ndarray:
    """The `count` (default TOP_LATENTS) latents that fire on most held-out samples (ties: larger
    decoder norm first); by decoder norm alone without activations."""
    count = TOP_LATENTS if count is None else count
    norms_K = np.asarray(run.decoder_norms, dtype=float)
    if acts is None:
        return np.argsort(-norms_K, kind="stable")[:count]
    firing_K = (np.asarray(acts) > 0).mean(axis=0)
    return np.lexsort((-norms_K, -firing_K))[:count]


def _top_latent_figures(
    run: RunMetrics, key: str, acts: np.ndarray | None, figures_dir: Path
) -> list[str]:
    """A large SAE's figures: its top latents against their best features (columns in the order
    the latents first pick them), their latent-latent cosines and the top ones' histograms."""
    heading = f"{run.label} seed {run.seed}"
    top_T = top_latents(run, acts)
    decoder_KF = run.matrix("decoder_cos")
    rows_TF = np.asarray(decoder_KF[top_T], dtype=float)
    features = list(dict.fromkeys(int(i) for i in np.abs(rows_TF).argmax(axis=1)))
    shown = f"top {len(top_T)} of {decoder_KF.shape[0]} latents by firing"
    names = [f"{key}-decoder.png"]
    cos_heatmap(
        rows_TF[:, features],
        f"{heading}: decoder cos, {shown}, with their best features",
        figures_dir / names[-1],
        row_ids=top_T,
        col_ids=features,
    )
    architecture = run.label if run.architecture is None else run.architecture
    if architecture != "tied":
        names.append(f"{key}-encoder.png")
        encoder_TF = np.asarray(run.matrix("encoder_cos")[top_T], dtype=float)[:, features]
        cos_heatmap(
            encoder_TF,
            f"{heading}: encoder cos, {shown}",
            figures_dir / names[-1],
            row_ids=top_T,
            col_ids=features,
        )
    names.append(f"{key}-latents.png")
    latent_TT = np.asarray(run.matrix("latent_cos")[top_T][:, top_T], dtype=float)
    cos_heatmap(
        latent_TT,
        f"{heading}: decoder cos between the {shown}",
        figures_dir / names[-1],
        row_label="latent",
        col_label="latent",
        row_ids=top_T,
        col_ids=top_T,
    )
    if acts is not None:
        names.append(f"{key}-hist.png")
        hist_T = top_T[:TOP_HISTOGRAMS]
        activation_histograms(
            np.asarray(acts)[:, hist_T],
            run.peak_locations,
            f"{heading}: activations of the {len(hist_T)} latents that fire most",
            figures_dir / names[-1],
            run.peak_models or (),
            latent_ids=hist_T,
        )
    return names


def _run_figures(
    run: RunMetrics,
    key: str,
    acts: np.ndarray | None,
    figures_dir: Path,
    parents: set[int] = frozenset(),
    threshold: float = CLEAN_COS,
) -> list[str]:
    latents, features = run.shape("decoder_cos")
    if max(latents, features) > TOP_LATENTS:
        return _top_latent_figures(run, key, acts, figures_dir)
    heading = f"{run.label} seed {run.seed}"
    broken = set(run.broken_latents)
    marks = {
        "row_marks": latent_marks(run),
        "col_marks": {f: "parent" for f in parents},
        "threshold": threshold,
        "boxes": {
            (m.latent, m.feature): "broken" if m.latent in broken else "clean" for m in run.matches
        },
    }
    names = []
    if run.decoder_cos:  # stored activations without labels or directions have no true features
        names.append(f"{key}-decoder.png")
        cos_heatmap(
            run.decoder_cos,
            f"{heading}: decoder cos with true features",
            figures_dir / names[-1],
            **marks,
        )
    # A tied SAE's encoder is its decoder: a second heatmap would repeat the first.
    architecture = run.label if run.architecture is None else run.architecture
    if architecture != "tied" and run.encoder_cos:
        names.append(f"{key}-encoder.png")
        cos_heatmap(
            run.encoder_cos,
            f"{heading}: encoder cos with true features",
            figures_dir / names[-1],
            **marks,
        )
    names.append(f"{key}-latents.png")
    latent_cos_heatmap(
        run.latent_cos,
        f"{heading}: decoder cos between latents",
        figures_dir / names[-1],
        latent_marks(run),
    )
    if acts is not None:
        names.append(f"{key}-hist.png")
        activation_histograms(
            acts,
            run.peak_locations,
            f"{heading}: latent activations",
            figures_dir / names[-1],
            run.peak_models or (),
        )
    return names


def _world_figure(metrics: Metrics, figures_dir: Path) -> str:
    world = metrics.world
    expected = np.asarray(world.expected_mse, dtype=float)
    rates = np.asarray(world.firing_rates, dtype=float)
    magnitudes = world.magnitudes
    if magnitudes is None:  # older metrics.json: p * m^2 = expected MSE gives m back
        magnitudes = np.sqrt(
            np.divide(expected, rates, out=np.zeros_like(expected), where=rates > 0)
        )
    latents = max((run.shape("decoder_cos")[0] for run in metrics.runs), default=0)
    top = (world.expected_mse_ranking or list(np.argsort(-expected)))[
        :latents
    ]  # older runs: no ranking
    world_profile(
        expected, rates, magnitudes, f"{metrics.name}: features", figures_dir / "world.png", top
    )
    return "world.png"


def _write_cell_values(ax, cos_RC: np.ndarray, threshold: float = CLEAN_COS) -> None:
    for (r, c), value in np.ndenumerate(cos_RC):
        colour = "white" if abs(value) > 0.55 else "black"  # dark ends of RdBu need light text
        text = cos_text(float(value), threshold)  # 0.9477 prints 0.948: it is broken, not 0.95
        ax.text(
            c,
            r,
            text,
            ha="center",
            va="center",
            fontsize=6.5 if len(text) <= 5 else 5.5,
            color=colour,
        )


def _latent_panel(
    ax, latent: int, acts_B: np.ndarray, peaks: Sequence[float], model: dict | None = None
) -> None:
    top = float(acts_B.max()) if acts_B.size else 0.0
    ax.tick_params(labelsize=7)
    if top <= 0:
        ax.set_title(f"latent {latent}: dead", fontsize=9)
        ax.text(
            0.5,
            0.5,
            "dead",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
            fontsize=12,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        return
    low = HIST_FLOOR * top
    shown = acts_B[acts_B > low]
    ax.hist(
        shown, bins=HIST_BINS, range=(low, top), histtype="stepfilled", color="tab:blue", alpha=0.6
    )
    ax.set_yscale("log")
    if model is not None and model.mixture:
        # The mixture was fitted to activations above its own floor: scale it to the count here.
        xs = np.linspace(max(low, model.floor), top, 300)
        fitted = int((acts_B > model.floor).sum())
        density = mixture_density(xs, model.mixture)
        ax.plot(
            xs,
            np.maximum(fitted * density * (top - low) / HIST_BINS, 1e-1),
            color="black",
            linewidth=0.9,
            label="mixture",
        )
        if model.threshold is not None:
            ax.axvline(
                model.threshold, color="tab:green", linestyle=":", linewidth=1.1, label="threshold"
            )
        ax.set_ylim(bottom=0.5)
    for location in peaks:
        ax.axvline(location, color="tab:red", linestyle="--", linewidth=0.9)
    positive = int((acts_B > 0).sum())
    hidden = 1 - len(shown) / positive if positive else 0.0
    ax.set_title(
        f"latent {latent}: {len(peaks)} peak{'' if len(peaks) == 1 else 's'}\n"
        f"{hidden:.0%} of firings below {HIST_FLOOR:.0%} of max: not shown",
        fontsize=8,
    )
    ax.set_xlabel("activation", fontsize=7)
    ax.set_ylabel("count (log)", fontsize=7)


def _save(fig, path: str | Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)  # a reproduction writes hundreds of figures; open ones would pile up
