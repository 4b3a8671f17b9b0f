"""The tied-absorption map of the recap world with the exact optimum line drawn over it.

Reads the sweep of studies/recap-map/sweep.toml (parent rate x child rate, 10 seeds per cell):

    broken-latents sweep studies/recap-map/sweep.toml --out sweeps/recap-map
    python studies/recap_map.py sweeps/recap-map

and writes docs/recap-absorption-map.png and .md. Above the line p0 = sqrt 2 p1 / (1 - p1)
(exact.tied_absorption_boundary) the true basis is the global optimum of the tied SAE's loss;
below it the 45-degree pair is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from broken_latents.world.exact import tied_absorption_boundary  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
PARENT, CHILD = "world.firing[0]", "world.firing[1]"


def main(sweep_dir: Path) -> None:
    record = json.loads((sweep_dir / "sweep.json").read_text())
    cells = [c for c in record["cells"] if c["status"] == "done"]
    parents = sorted({c["values"][PARENT] for c in cells})
    children = sorted({c["values"][CHILD] for c in cells})
    held = np.full((len(parents), len(children)), np.nan)
    seeds = np.zeros_like(held)
    for c in cells:
        i, j = parents.index(c["values"][PARENT]), children.index(c["values"][CHILD])
        held[i, j], seeds[i, j] = (
            c["claims"]["tied-clean"]["held"],
            c["claims"]["tied-clean"]["seeds"],
        )

    fig, ax = plt.subplots(figsize=(6.2, 4.8), layout="constrained")
    image = ax.imshow(held / seeds, origin="lower", cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(held):
        ax.text(j, i, f"{value:.0f}/{seeds[i, j]:.0f}", ha="center", va="center", fontsize=9)
    # the line in the cells' index coordinates: interpolate the child and parent axes
    fine = np.linspace(children[0], children[-1], 200)
    boundary = np.array([tied_absorption_boundary(p1) for p1 in fine])
    ax.plot(
        np.interp(fine, children, range(len(children))),
        np.interp(boundary, parents, range(len(parents)), left=np.nan, right=np.nan),
        color="black",
        linewidth=2,
        label="p0 = sqrt2 p1 / (1 - p1): above, the true basis is the global optimum",
    )
    ax.set_xticks(range(len(children)), [f"{v:g}" for v in children])
    ax.set_yticks(range(len(parents)), [f"{v:g}" for v in parents])
    ax.set_xlabel("child rate p1 (the child switches the parent on)")
    ax.set_ylabel("parent's own rate p0")
    ax.set_title("recap world, tied SAE: seeds with every feature clean (cos >= 0.95)", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    fig.colorbar(image, ax=ax, label="share of seeds")
    fig.savefig(DOCS / "recap-absorption-map.png", dpi=120)

    above = [
        (held[i, j], seeds[i, j])
        for i, p0 in enumerate(parents)
        for j, p1 in enumerate(children)
        if not np.isnan(held[i, j]) and p0 > tied_absorption_boundary(p1)
    ]
    below = [
        (held[i, j], seeds[i, j])
        for i, p0 in enumerate(parents)
        for j, p1 in enumerate(children)
        if not np.isnan(held[i, j]) and p0 <= tied_absorption_boundary(p1)
    ]
    lines = [
        "| parent p0 \\ child p1 | " + " | ".join(f"{v:g}" for v in children) + " |",
        "|---|" + "---|" * len(children),
    ]
    for i, p0 in enumerate(parents):
        row = [
            f"{held[i, j]:.0f}/{seeds[i, j]:.0f}"
            + ("" if p0 > tied_absorption_boundary(p1) else " (pair optimal)")
            for j, p1 in enumerate(children)
        ]
        lines.append(f"| {p0:g} | " + " | ".join(row) + " |")
    summary = (
        f"Above the line (true basis optimal): {sum(h for h, _ in above):.0f}/{sum(s for _, s in above):.0f} "
        f"seeds clean over {len(above)} cells; below it (45-degree pair optimal): "
        f"{sum(h for h, _ in below):.0f}/{sum(s for _, s in below):.0f} over {len(below)} cells."
    )
    (DOCS / "recap-absorption-map.md").write_text("\n".join(lines) + "\n\n" + summary + "\n")
    print("\n".join(lines) + "\n\n" + summary)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "sweeps/recap-map"))
