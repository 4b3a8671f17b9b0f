"""Claim maps: for each claim and pair of axes, the share of seeds where the claim held (other axes
pooled), each square annotated held/seeds; one axis gives a bar chart. And the sweep's report page.

`measure` is any function of a cell's record giving (successes, trials), so a map of something other
than a claim (a metric over seeds) is one more call of `claim_map`.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .record import CellRecord, SweepRecord  # noqa: E402
from .spec import _format, _safe  # noqa: E402

Measure = Callable[[CellRecord], "tuple[int, int] | None"]


def claim_measure(claim: str) -> Measure:
    def measure(cell: CellRecord):
        counts = cell.claims.get(claim)
        return (counts.held, counts.seeds) if cell.status == "done" and counts else None

    return measure


def pooled(cells: list[CellRecord], axes: list[str], measure: Measure) -> dict[tuple, tuple[int, int, int]]:
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


def claim_map(record: SweepRecord, measure: Measure, title: str, path: Path, axes: list[str]) -> Path:
    """One heatmap over two axes (rows: the first) or a bar chart over one."""
    table = pooled(record.cells, axes, measure)
    ticks = [[_key(v) for v in record.axes[a]] for a in axes]
    fig_w = 2.5 + 0.9 * len(ticks[-1])
    if len(axes) == 1:
        fig, ax = plt.subplots(figsize=(max(fig_w, 4), 3.2))
        fractions, notes = [], []
        for tick in ticks[0]:
            held, seeds, failed = table.get((tick,), (0, 0, 0))
            fractions.append(held / seeds if seeds else np.nan)
            notes.append(f"{held}/{seeds}" if seeds else "failed" if failed else "")
        x = np.arange(len(ticks[0]))
        ax.bar(x, np.nan_to_num(fractions), color="#4c72b0")
        for xi, frac, note in zip(x, fractions, notes):
            ax.text(xi, (0 if np.isnan(frac) else frac) + 0.02, note, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, ticks[0], rotation=45 if max(map(len, ticks[0])) > 5 else 0, ha="right")
        ax.set_ylim(0, 1.12)
        ax.set_xlabel(axes[0])
        ax.set_ylabel("share of seeds where it held")
    else:
        fig, ax = plt.subplots(figsize=(max(fig_w, 4), 1.6 + 0.6 * len(ticks[0])))
        grid = np.full((len(ticks[0]), len(ticks[1])), np.nan)
        for (i, a), (j, b) in itertools.product(enumerate(ticks[0]), enumerate(ticks[1])):
            held, seeds, failed = table.get((a, b), (0, 0, 0))
            if seeds:
                grid[i, j] = held / seeds
            note = f"{held}/{seeds}" if seeds else "failed" if failed else ""
            ax.text(j, i, note, ha="center", va="center", fontsize=8,
                    color="white" if seeds and (held / seeds < 0.25 or held / seeds > 0.75) else "black")
        cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#bbbbbb")
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto", origin="lower")
        ax.set_xticks(range(len(ticks[1])), ticks[1], rotation=45 if max(map(len, ticks[1])) > 5 else 0, ha="right")
        ax.set_yticks(range(len(ticks[0])), ticks[0])
        ax.set_xlabel(axes[1])
        ax.set_ylabel(axes[0])
        fig.colorbar(image, ax=ax, label="share of seeds where it held")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.name}.partial-{os.getpid()}.png"
    fig.savefig(partial, dpi=100)
    plt.close(fig)
    os.replace(partial, path)
    return path


def write_maps(record: SweepRecord, maps_dir: Path) -> dict[str, list[Path]]:
    """Claim -> its maps: one per pair of axes (one per axis if there is only one axis)."""
    axes = list(record.axes)
    pairs = [list(p) for p in itertools.combinations(axes, 2)] if len(axes) >= 2 else [[a] for a in axes]
    out: dict[str, list[Path]] = {}
    for claim in record.claims:
        for pair in pairs:
            name = f"{_safe(claim)}__{'__'.join(_safe(a) for a in pair)}.png"
            title = f"{claim}: seeds held / seeds run ({record.base})"
            out.setdefault(claim, []).append(claim_map(record, claim_measure(claim), title, maps_dir / name, pair))
    return out


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
        "Each square is the share of seeds in which the claim held, pooled over any other axes; the "
        "numbers are seeds held / seeds run. Grey: the cell failed.",
    ]
    for claim, paths in maps.items():
        lines.append(f"## {claim}")
        lines += [f"![{claim}](maps/{p.name})" for p in paths]
    if not maps:
        lines.append("No claims to map (the base has none, or the spec chose none).")
    lines.append("## Cells")
    header = [*record.axes, "status", *record.claims, "path"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for cell in cells:
        claims = [f"{cell.claims[c].held}/{cell.claims[c].seeds}" if c in cell.claims else "" for c in record.claims]
        status = cell.status if cell.status == "done" else f"{cell.status}: {cell.error}"
        row = [_format(cell.values[a]) for a in record.axes] + [status, *claims, f"`{cell.path}`"]
        lines.append("| " + " | ".join(r.replace("|", "/") for r in row) + " |")
    page = render_html([HtmlSection("\n\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]), out)],
                       f"broken-latents sweep: {record.base}")
    path = out / "report.html"
    partial = out / f".report.html.partial-{os.getpid()}"
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path
