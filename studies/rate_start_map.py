"""Map the narrow and superposition experiments over the narrow world's rate start x world geometry.

The post gives the rates' end (0.3) but not their start. Every claim of the narrow-world experiments
is checked at rate starts 0.01, 0.015 and 0.02, for world seeds 0-4 (the feature directions; in
superposition their sign pattern changes what an SAE learns) x 5 training seeds, at the registered
budgets. Results go to docs/rate-start-map.json cell by cell (a rerun skips finished cells) and the
table to docs/rate-start-map.md.

    python studies/rate_start_map.py [--starts 0.01 0.015 0.02] [--geometries 5] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from broken_latents.config.overrides import apply_overrides
from broken_latents.experiments import EXPERIMENTS
from broken_latents.pipeline.resolve import Target
from broken_latents.pipeline.run import train_and_measure

EXPERIMENT_NAMES = [
    "superposition-parent-6",
    "narrow-independent",
    "narrow-5-7-force-12",
    "narrow-parent-6",
    "narrow-5-7-force-12-aux",
    "narrow-parent-6-aux",
]
OUT = Path(__file__).resolve().parent.parent / "docs" / "rate-start-map.json"


def cell_key(name: str, start: float, geometry: int, first_seed: int = 0) -> str:
    return f"{name}|{start:g}|{geometry}" + (f"|from-seed-{first_seed}" if first_seed else "")


def run_cell(name: str, start: float, geometry: int, seeds: int, first_seed: int = 0) -> dict:
    exp = EXPERIMENTS[name]
    config = apply_overrides(
        exp.config,
        [
            f"world.firing={{linear=[{start},0.3]}}",
            f"world.seed={geometry}",
            f"train.seeds={seeds}",
            f"train.first_seed={first_seed}",
        ],
    )
    began = time.perf_counter()
    _, metrics = train_and_measure(Target(config, exp.claims, exp.clean_cos, name))
    claims = metrics.claims
    return {
        "experiment": name,
        "rate_start": start,
        "world_seed": geometry,
        "seeds": seeds,
        "max_feature_cos": metrics.world.max_feature_cos,
        "seconds": round(time.perf_counter() - began, 1),
        "claims": {c.id: {"per_seed": c.per_seed, "detail": c.detail} for c in claims},
    }


def table(cells: dict, starts: list[float]) -> str:
    """Claims x rate start: seeds held / seeds run over every geometry, and geometries where it held (>= 2/3 of seeds)."""
    lines = [
        "| experiment | claim | " + " | ".join(f"start {s:g}" for s in starts) + " |",
        "|---|---|" + "---|" * len(starts),
    ]
    for name in EXPERIMENT_NAMES:
        mapped = {cid for c in cells.values() if c["experiment"] == name for cid in c["claims"]}
        for claim in [
            claim for claim in EXPERIMENTS[name].claims if claim.id in mapped
        ]:  # claims added later: not mapped
            row = []
            for start in starts:
                found = [
                    c
                    for c in cells.values()
                    if c["experiment"] == name and c["rate_start"] == start
                ]
                if not found:
                    row.append("-")
                    continue
                by_geometry: dict[
                    int, list[bool]
                ] = {}  # a geometry's seeds may come from several cells
                for c in found:
                    by_geometry.setdefault(c["world_seed"], []).extend(
                        c["claims"][claim.id]["per_seed"]
                    )
                per_geo = [by_geometry[g] for g in sorted(by_geometry)]
                held = sum(sum(p) for p in per_geo)
                total = sum(len(p) for p in per_geo)
                geos = sum(sum(p) * 3 >= 2 * len(p) for p in per_geo)
                row.append(f"{held}/{total} ({geos}/{len(per_geo)} geom.)")
            lines.append(f"| {name} | {claim.id} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=float, nargs="+", default=[0.01, 0.015, 0.02])
    parser.add_argument("--geometries", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first..first+seeds-1 (to add seeds)"
    )
    parser.add_argument("--geometry-from", type=int, default=0, help="world seeds from this one on")
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENT_NAMES)
    parser.add_argument(
        "--out", type=Path, default=OUT, help="cells file (several processes: one file each)"
    )
    parser.add_argument(
        "--table",
        type=Path,
        nargs="*",
        default=[],
        help="only write the table, from these cells files (and --out)",
    )
    args = parser.parse_args()
    out = args.out
    cells = json.loads(out.read_text())["cells"] if out.exists() else {}
    if args.table:
        for extra in args.table:
            cells.update(json.loads(extra.read_text())["cells"])
        write_table(cells, OUT.with_suffix(".md"))
        return
    for name in args.experiments:
        for start in args.starts:
            for geometry in range(args.geometry_from, args.geometries):
                key = cell_key(name, start, geometry, args.first_seed)
                if key in cells:
                    continue
                cells[key] = run_cell(name, start, geometry, args.seeds, args.first_seed)
                held = {
                    cid: f"{sum(c['per_seed'])}/{len(c['per_seed'])}"
                    for cid, c in cells[key]["claims"].items()
                }
                print(f"{key}: {cells[key]['seconds']:.0f} s {held}", flush=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps({"cells": cells}, indent=1))
                tmp.replace(out)  # a killed study keeps every finished cell
    write_table(cells, out.with_suffix(".md"))


def write_table(cells: dict, path: Path) -> None:
    path.write_text(table(cells, sorted({c["rate_start"] for c in cells.values()})) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
