"""Do `reproduce --quick` verdicts agree with the full reproduction's? Per claim (world seeds pooled
as the report pools them), and the wall time of each.

    broken-latents reproduce --seeds 3 --out reproduction
    broken-latents reproduce --seeds 3 --quick --out reproduction-quick
    python studies/quick_fidelity.py reproduction reproduction-quick

Writes docs/quick-fidelity.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from broken_latents.experiments import EXPERIMENTS
from broken_latents.analysis.metrics import ClaimResult, Metrics
from broken_latents.pipeline.reproduce import geometry_dir, pooled_claims

DOCS = Path(__file__).resolve().parent.parent / "docs"


def verdicts(root: Path) -> tuple[dict[tuple[str, str], ClaimResult], float]:
    found, seconds = {}, 0.0
    for name, exp in EXPERIMENTS.items():
        outcomes = []
        for geometry in range(exp.geometries):
            path = root / geometry_dir(name, geometry) / "metrics.json"
            if path.is_file():
                metrics = Metrics.from_json(json.loads(path.read_text()))
                seconds += metrics.wall_seconds
                outcomes.append(SimpleNamespace(metrics=metrics))
        if outcomes:
            for claim in pooled_claims(outcomes):
                found[(name, claim.id)] = claim
    return found, seconds


def main(full_dir: Path, quick_dir: Path) -> None:
    full, full_seconds = verdicts(full_dir)
    quick, quick_seconds = verdicts(quick_dir)
    both = [key for key in full if key in quick]
    agree = [key for key in both if full[key].holds == quick[key].holds]
    lines = ["| experiment | claim | full | quick | agree |", "|---|---|---|---|---|"]
    for key in both:
        f, q = full[key], quick[key]
        lines.append(
            f"| {key[0]} | {key[1]} | {f.seeds_held}/{f.seeds_run} {'holds' if f.holds else 'fails'} | "
            f"{q.seeds_held}/{q.seeds_run} {'holds' if q.holds else 'fails'} | "
            f"{'yes' if key in agree else '**no**'} |"
        )
    summary = (
        f"Verdicts agree on {len(agree)}/{len(both)} claims ({len(agree) / max(len(both), 1):.0%}); "
        f"training + analysis wall time: quick {quick_seconds / 60:.1f} min, full {full_seconds / 60:.1f} min "
        f"({quick_seconds / max(full_seconds, 1e-9):.2f} of the full run)."
    )
    (DOCS / "quick-fidelity.md").write_text(summary + "\n\n" + "\n".join(lines) + "\n")
    print(summary)
    print("\n".join(line for line in lines if "**no**" in line))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
