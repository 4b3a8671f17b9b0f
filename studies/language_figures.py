"""Figures and tables of docs/language.md from a `language-saes` run directory and its language world.

    broken-latents run language-saes --out runs/language-saes
    python studies/language_figures.py runs/language-saes

Writes docs/language-cos.png (best |cos| per concept and SAE), docs/language-absorption.png
(absorption fraction per concept and SAE), docs/language-loss.png (the transformer's training loss)
and docs/language.json (the numbers the page quotes, per SAE and seed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from broken_latents.analysis.metrics import read_metrics  # noqa: E402
from broken_latents.experiments import EXPERIMENTS  # noqa: E402
from broken_latents.experiments.claims import evaluate_claims  # noqa: E402
from broken_latents.experiments.language import LANGUAGE, concept_kinds, detection  # noqa: E402
from broken_latents.language.cache import world_folder  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def detector(run) -> dict:
    truth, flagged, both = detection(run)
    return {
        "truth_broken": truth,
        "flagged": flagged,
        "both": both,
        "precision": round(both / max(flagged, 1), 3),
        "recall": round(both / max(truth, 1), 3),
    }


def saebench_by_kind(run, kinds: dict[str, list[int]]) -> dict:
    """SAEBench's absorption fraction and full absorption (probe directions), mean per concept kind, and
    how many main latents k-sparse probing gave each kind on average."""
    saebench = run.extra.get("saebench_absorption")
    if saebench is None:
        return {}

    def mean(key, concepts):
        values = [saebench[key][c] for c in concepts if saebench[key][c] is not None]
        return round(float(np.mean(values)), 3) if values else None

    return {
        **{f"saebench_absorption_{k}s": mean("absorption_fraction", v) for k, v in kinds.items()},
        **{f"saebench_full_{k}s": mean("full_absorption", v) for k, v in kinds.items()},
        **{
            f"saebench_main_latents_{k}s": round(
                float(np.mean([len(saebench["main_latents"][c]) for c in v])), 2
            )
            for k, v in kinds.items()
        },
        "saebench_mean_absorption": saebench["mean_absorption_fraction"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    metrics = read_metrics(args.run / "metrics.json", "run")
    # The claims as registered now, on the run's metrics (the same numbers the run checked them on).
    metrics.claims = evaluate_claims(EXPERIMENTS["language-saes"].claims, metrics)
    world = metrics.world
    names = [
        json.loads((world_folder(LANGUAGE) / "concepts.json").read_text())["concepts"][c]["name"]
        for c in world.extra["concepts"]
    ]
    kinds = concept_kinds(world)
    seed0 = [r for r in metrics.runs if r.seed == metrics.runs[0].seed]
    labels = [r.label for r in seed0]
    best = np.array([np.abs(np.array(r.decoder_cos)).max(0) for r in seed0])
    absorption = np.array([r.absorption for r in seed0])
    for values, title, name in [
        (best, "best decoder |cos| with each concept's direction", "language-cos.png"),
        (absorption, "absorption fraction per concept", "language-absorption.png"),
    ]:
        fig, ax = plt.subplots(figsize=(14, 3.2))
        im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xticks(
            range(len(names)),
            [n.replace("topic", "t").replace(".sub", ".s").replace(".word", ".w") for n in names],
            rotation=90,
            fontsize=7,
        )
        ax.set_title(f"{title} (seed {seed0[0].seed})")
        fig.colorbar(im, ax=ax, fraction=0.02)
        fig.tight_layout()
        fig.savefig(DOCS / name, dpi=110)
        plt.close(fig)
    summary = json.loads((world_folder(LANGUAGE) / "language.json").read_text())
    curve = np.array(summary["transformer"]["loss_curve"])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(curve[:, 0], curve[:, 1], label="training loss")
    ax.axhline(
        summary["transformer"]["entropy_given_state"],
        color="k",
        ls="--",
        label="floor (hidden state known)",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.set_ylim(2.2, 3.0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "language-loss.png", dpi=110)
    plt.close(fig)

    rows = []
    for r in metrics.runs:
        gaps = [g for g in r.absorption_gap or [] if g.gap is not None]
        fraction_gaps = r.extra["absorption_fraction_gap"]
        rows.append(
            {
                "label": r.label,
                "seed": r.seed,
                "explained_variance": r.explained_variance,
                "l0": r.l0,
                "dead": len(r.dead_latents),
                "learned": len(r.learned_features),
                **{
                    f"learned_{k}s": f"{sum(c in r.learned_features for c in v)}/{len(v)}"
                    for k, v in kinds.items()
                },
                **{
                    f"absorption_{k}s": round(float(np.mean([r.absorption[c] for c in v])), 3)
                    for k, v in kinds.items()
                },
                "mcc": r.mcc,
                "f1": r.f1,
                "mean_absorption_gap": round(float(np.mean([g.gap for g in gaps])), 3),
                "max_absorption_gap": max(gaps, key=lambda g: g.gap).to_json(),
                "mean_absorption_fraction_gap": round(
                    float(np.mean([g["gap"] for g in fraction_gaps])), 3
                ),
                "detector": detector(r),
                **saebench_by_kind(r, kinds),
            }
        )
    out = {
        "language": {
            k: summary[k]
            for k in (
                "tokens",
                "dim",
                "concepts",
                "kept",
                "dropped",
                "wall_seconds",
                "activation_bytes",
                "probe_seconds",
            )
        },
        "transformer": {k: v for k, v in summary["transformer"].items() if k != "loss_curve"},
        "samples": metrics.samples,
        "samples_per_second": metrics.samples_per_second,
        "wall_seconds": metrics.wall_seconds,
        "runs": rows,
        "claims": [
            {"id": c.id, "held": c.seeds_held, "seeds": c.seeds_run, "detail": c.detail}
            for c in metrics.claims or []
        ],
    }
    (DOCS / "language.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
