"""Maps of a sweep: for each claim and pair of axes, the share of seeds where the claim held (other axes
pooled), each square annotated held/seeds; for each mapped metric (spec `metrics`) and SAE, its mean
over seeds. One axis gives a bar chart. And the sweep's report page.

`measure` is any function of a cell's record giving (successes, trials), so a map of another
success count is one more call of `claim_map`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files.atomic import file_in_place  # noqa: E402
from .record import CellRecord, SweepRecord  # noqa: E402
from .spec import _format, _safe  # noqa: E402

Measure = Callable[[CellRecord], "tuple[int, int] | None"]


def claim_measure(claim: str) -> Measure:
    def measure(cell: CellRecord):
        counts = cell.claims.get(claim)
        return (counts.held, counts.seeds) if cell.status == "done" and counts else None

    return measure


def pooled(
    cells: list[CellRecord], axes: list[str], measure: Measure
) -> dict[tuple, tuple[int, int, int]]:
    """(value of each axis in `axes`) -> (successes, trials, failed cells), other axes pooled."""
    table: dict[tuple, list[int]] = {}
    for cell in cells:
        key = tuple(_key(cell.values[a]) for a in axes)
        entry = table.setdefault(key, [0, 0, 0])
        counts = measure(cell)
        if counts is None:
            entry[2] += 1
        else:
            entry[0] += counts[0]
            entry[1] += counts[1]
    return {k: tuple(v) for k, v in table.items()}


def _key(value: Any) -> str:
    return _format(value)


def claim_map(
    record: SweepRecord, measure: Measure, title: str, path: Path, axes: list[str]
) -> Path:
    """One heatmap over two axes (rows: the first) or a bar chart over one: the share of seeds where
    the claim held, each square annotated held/seeds."""
    table = pooled(record.cells, axes, measure)

    def square(key: tuple) -> tuple[float, str]:
        held, seeds, failed = table.get(key, (0, 0, 0))
        return (held / seeds if seeds else np.nan), (
            f"{held}/{seeds}" if seeds else _unfinished(record, axes, key)
        )

    return _draw(
        record,
        axes,
        square,
        title,
        path,
        "share of seeds where it held",
        (0.0, 1.0),
        matplotlib.colormaps["RdYlGn"],
    )


def metric_map(
    record: SweepRecord, label: str, metric: str, title: str, path: Path, axes: list[str]
) -> Path:
    """The mean over seeds of a per-run scalar of SAE `label` (sweep.json's cell["metrics"]), over
    one or two axes; cells sharing these axes' values (other axes) are averaged."""
    table: dict[tuple, list[float]] = {}
    for cell in record.cells:
        value = cell.metrics.get(label, {}).get(metric) if cell.status == "done" else None
        entry = table.setdefault(tuple(_key(cell.values[a]) for a in axes), [])
        if value is not None:
            entry.append(value)
    finite = [v for values in table.values() for v in values]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)

    def square(key: tuple) -> tuple[float, str]:
        values = table.get(key)
        if not values:
            return np.nan, _unfinished(record, axes, key)
        mean = float(np.mean(values))
        return mean, f"{mean:.3g}"

    return _draw(
        record,
        axes,
        square,
        title,
        path,
        "mean over seeds",
        (low, high if high > low else low + 1e-9),
        matplotlib.colormaps["viridis"],
    )


def _unfinished(record: SweepRecord, axes: list[str], key: tuple) -> str:
    """The note of a square without a value: "invalid" when its cells' configs were refused, else "failed"."""
    cells = [c for c in record.cells if tuple(_key(c.values[a]) for a in axes) == key]
    if not cells:
        return ""
    return "invalid" if all(c.invalid for c in cells if c.status != "done") else "failed"


def _draw(
    record: SweepRecord,
    axes: list[str],
    square: Callable[[tuple], "tuple[float, str]"],
    title: str,
    path: Path,
    scale: str,
    limits: tuple[float, float],
    cmap,
) -> Path:
    """A heatmap over two axes (rows: the first) or a bar chart over one; `square(tick values)` gives a
    square's value (NaN: nothing to show, grey) and its annotation."""
    ticks = [[_key(v) for v in record.axes[a]] for a in axes]
    low, high = limits
    fig_w = 2.5 + 0.9 * len(ticks[-1])
    if len(axes) == 1:
        fig, ax = plt.subplots(figsize=(max(fig_w, 4), 3.2))
        values, notes = zip(*(square((tick,)) for tick in ticks[0]))
        x = np.arange(len(ticks[0]))
        ax.bar(x, np.nan_to_num(values, nan=low), bottom=0 if low >= 0 else None, color="#4c72b0")
        top = max(high, 0.0)
        for xi, value, note in zip(x, values, notes):
            ax.text(
                xi,
                (0 if np.isnan(value) else value) + 0.02 * (top - min(low, 0) or 1),
                note,
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(x, ticks[0], rotation=45 if max(map(len, ticks[0])) > 5 else 0, ha="right")
        ax.set_ylim(min(low, 0), top + 0.12 * (top - min(low, 0) or 1))
        ax.set_xlabel(axes[0])
        ax.set_ylabel(scale)
    else:
        fig, ax = plt.subplots(figsize=(max(fig_w, 4), 1.6 + 0.6 * len(ticks[0])))
        grid = np.full((len(ticks[0]), len(ticks[1])), np.nan)
        for (i, a), (j, b) in itertools.product(enumerate(ticks[0]), enumerate(ticks[1])):
            grid[i, j], note = square((a, b))
            shade = (grid[i, j] - low) / (high - low) if high > low else 0.5
            ax.text(
                j,
                i,
                note,
                ha="center",
                va="center",
                fontsize=8,
                color="white"
                if not np.isnan(shade) and (shade < 0.25 or shade > 0.75)
                else "black",
            )
        image = ax.imshow(
            np.ma.masked_invalid(grid),
            cmap=cmap.with_extremes(bad="#bbbbbb"),
            vmin=low,
            vmax=high,
            aspect="auto",
            origin="lower",
        )
        ax.set_xticks(
            range(len(ticks[1])),
            ticks[1],
            rotation=45 if max(map(len, ticks[1])) > 5 else 0,
            ha="right",
        )
        ax.set_yticks(range(len(ticks[0])), ticks[0])
        ax.set_xlabel(axes[1])
        ax.set_ylabel(axes[0])
        fig.colorbar(image, ax=ax, label=scale)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    file_in_place(path, lambda partial: fig.savefig(partial, dpi=100))
    plt.close(fig)
    return path


def _axis_groups(record: SweepRecord) -> list[list[str]]:
    """One map per pair of axes (one per axis if there is only one axis; none without axes)."""
    axes = list(record.axes)
    return (
        [list(p) for p in itertools.combinations(axes, 2)]
        if len(axes) >= 2
        else [[a] for a in axes]
    )


def write_maps(record: SweepRecord, maps_dir: Path) -> dict[str, list[Path]]:
    """Map title -> its maps: per claim, and per mapped metric and SAE, one per pair of axes."""
    out: dict[str, list[Path]] = {}
    for claim in record.claims:
        for pair in _axis_groups(record):
            name = f"{_safe(claim)}__{'__'.join(_safe(a) for a in pair)}.png"
            title = f"{claim}\nseeds held / seeds run ({record.base})"
            out.setdefault(claim, []).append(
                claim_map(record, claim_measure(claim), title, maps_dir / name, pair)
            )
    labels = list(dict.fromkeys(label for cell in record.cells for label in cell.metrics))
    for metric in record.metrics:
        for label in labels:
            for pair in _axis_groups(record):
                name = f"metric-{_safe(metric)}__{_safe(label)}__{'__'.join(_safe(a) for a in pair)}.png"
                title = f"{metric} of SAE {label}\nmean over seeds ({record.base})"
                out.setdefault(f"{metric} ({label})", []).append(
                    metric_map(record, label, metric, title, maps_dir / name, pair)
                )
    return out


def nothing_to_map(record: SweepRecord) -> str:
    """Why a sweep drew no map, and what would give one."""
    if not record.axes:
        return 'nothing to map: the spec has no [axes]; add at least one axis (e.g. "train.lr" = [1e-3, 3e-4]).'
    if not record.claims and not record.metrics:
        from ..analysis.metrics import scalar_names

        return (
            "nothing to map: no claims (the base has none, or the spec chose none) and no metrics; add "
            f"metrics = [...] to the spec, from: {', '.join(scalar_names())}."
        )
    return "nothing to map: no cell finished, so no claim or metric has a value."


def write_report(record: SweepRecord, maps: dict[str, list[Path]], out: Path) -> Path:
    """DIR/report.html: the maps (embedded) and every cell's verdicts, one self-contained page."""
    from ..output.report import render_html, HtmlSection

    cells = record.cells
    done = sum(c.status == "done" for c in cells)
    lines = [
        f"# Sweep of {record.base}",
        f"{len(cells)} cells ({done} done, {len(cells) - done} failed), {record.seeds} seeds each. "
        f"Axes: {', '.join(f'`{k}` ({len(v)} values)' for k, v in record.axes.items()) or 'none'}. "
        f"Fixed: {', '.join(f'`{k} = {_format(v)}`' for k, v in record.set.items()) or 'nothing'}.",
        "Claim maps: each square is the share of seeds in which the claim held, pooled over any other axes; "
        "the numbers are seeds held / seeds run. Metric maps: the metric's mean over seeds (and over any other "
        "axes). Grey: the cell failed or was invalid.",
    ]
    for title, paths in maps.items():
        lines.append(f"## {title}")
        lines += [f"![{title}](maps/{p.name})" for p in paths]
    if not maps:
        lines.append(nothing_to_map(record))
    lines.append("## Cells")
    labels = list(dict.fromkeys(label for cell in cells for label in cell.metrics))
    mapped = [(metric, label) for metric in record.metrics for label in labels]
    header = [
        *record.axes,
        "status",
        *record.claims,
        *(f"{m} ({label})" for m, label in mapped),
        "path",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for cell in cells:
        claims = [
            f"{cell.claims[c].held}/{cell.claims[c].seeds}" if c in cell.claims else ""
            for c in record.claims
        ]
        means = cell.metrics
        values = [
            f"{means[label][m]:.4g}" if m in means.get(label, {}) else "" for m, label in mapped
        ]
        state = "invalid" if cell.invalid else cell.status
        status = state if state == "done" else f"{state}: {cell.error}"
        row = [_format(cell.values[a]) for a in record.axes] + [
            status,
            *claims,
            *values,
            f"`{cell.path}`",
        ]
        lines.append("| " + " | ".join(r.replace("|", "/") for r in row) + " |")
    page = render_html(
        [HtmlSection("\n\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]), out)],
        f"broken-latents sweep: {record.base}",
    )
    path = out / "report.html"
    file_in_place(path, lambda partial: partial.write_text(page, encoding="utf-8"))
    return path
