"""How well `inspect`'s `broken` flag, from activations alone, finds the latents the ground truth
calls broken (live, matched decoder cos < 0.95), over the SAEs of finished run directories.

For every SAE and seed of each run: 100k activations drawn from the run's own world (a stream the
SAE never trained on) are written to a temporary .npy, `inspect` runs on the SAE's SAELens folder,
and its per-latent flags are compared with metrics.json's `broken_latents` (dead latents count as
not broken on both sides).

    python studies/inspect_validation.py reproduction/*/ runs/noisy-*/   # run directories

Writes docs/inspect-validation.json and .md.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from broken_latents.config.toml_io import load_toml
from broken_latents.world.stream import DataStream
from broken_latents.inspect.detect import inspect_sae
from broken_latents.analysis.metrics import Metrics
from broken_latents.world.model import World

SAMPLES = 100_000
VALIDATION_STREAM = 7  # an offset no training or evaluation stream uses
DOCS = Path(__file__).resolve().parent.parent / "docs"


def validate(run_dir: Path, scratch: Path) -> list[dict]:
    config = load_toml(run_dir / "config.toml")
    metrics = Metrics.from_json(json.loads((run_dir / "metrics.json").read_text()))
    world = World.build(config.world)
    rows = []
    for run in metrics.runs:
        folder = run_dir / "weights" / f"{run.label}-seed{run.seed}"
        if not (folder / "cfg.json").is_file():
            continue
        f = DataStream(world, [run.seed], SAMPLES, offset=VALIDATION_STREAM, chunk=1).next()[
            0
        ]  # [N, B]
        np.save(scratch / "acts.npy", (f.T @ world.directions_ND).numpy().astype(np.float32))
        flags = inspect_sae(
            folder, scratch / "acts.npy", out=scratch / "out", progress=False
        ).result["latents"]
        truth = set(run.broken_latents)
        flagged = {r["latent"] for r in flags if r["broken"]}
        rows.append(
            {
                "run": run_dir.name,
                "label": run.label,
                "seed": run.seed,
                "latents": len(flags),
                "truth": sorted(truth),
                "flagged": sorted(flagged),
                "tp": len(truth & flagged),
                "fp": len(flagged - truth),
                "fn": len(truth - flagged),
            }
        )
    return rows


def main(run_dirs: list[Path]) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_dir in run_dirs:
            if (run_dir / "metrics.json").is_file():
                rows += validate(run_dir, Path(tmp))
                print(run_dir.name, rows[-1] if rows else "", flush=True)
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    latents = sum(r["latents"] for r in rows)
    summary = {
        "saes": len(rows),
        "latents": latents,
        "true_broken": tp + fn,
        "flagged": tp + fp,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": round(tp / max(tp + fp, 1), 3),
        "recall": round(tp / max(tp + fn, 1), 3),
    }
    (DOCS / "inspect-validation.json").write_text(
        json.dumps({"summary": summary, "saes": rows}, indent=1)
    )
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    lines = [
        "| run | SAEs | latents | broken (truth) | flagged | true pos. | false pos. | false neg. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in by_run.items():
        t, p_, n = (sum(r[k] for r in rs) for k in ("tp", "fp", "fn"))
        lines.append(
            f"| {name} | {len(rs)} | {sum(r['latents'] for r in rs)} | {t + n} | {t + p_} | {t} | {p_} | {n} |"
        )
    lines.append(
        f"| **all** | {len(rows)} | {latents} | {tp + fn} | {tp + fp} | {tp} | {fp} | {fn} |"
    )
    text = (
        "\n".join(lines)
        + f"\n\nPrecision {summary['precision']:.3f}, recall {summary['recall']:.3f}.\n"
    )
    (DOCS / "inspect-validation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
