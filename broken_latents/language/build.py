"""The language world end to end: generate the corpus, train the transformer, write its residual
stream and the concepts active at every token, and probe each concept.

Output folder (written beside DIR and moved into place when complete):
  activations.npy      [N, D] float32, the residual stream after block `transformer.layer`
  labels.npy           [N, C] bool, concept c active at token n
  directions.npy       [C, D] float32, per concept what it adds beyond its parent (the true feature,
                       `probes.own_directions`)
  mean_difference_directions.npy  [C, D] float32, the plain difference of class means
  probe_directions.npy [C, D] float32, per concept the logistic probe's unit weight
  concepts.json        names, parents, per-concept probe accuracy, kept or dropped and why
  language.json        losses, the entropy floor, wall times and file sizes
  transformer.safetensors  the network's weights
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .config import LanguageConfig
from .grammar import concepts, entropy_given_state, generate, vocabulary_size
from .probes import edges_from_labels, fit_probes, mean_difference_directions, own_directions
from .transformer import residual_activations, train_transformer
from ..files.atomic import folder_in_place

TRAIN_SHARE = 0.7
"""Share of the sequences the transformer trains on; activations and probes come from the rest."""


@dataclass
class LanguageOutcome:
    directory: Path
    summary: dict


def build_language(
    config: LanguageConfig, out: str | Path, progress: bool = False
) -> LanguageOutcome:
    out = Path(out)
    with folder_in_place(out) as partial:
        summary = _build(config, partial, progress)
    return LanguageOutcome(out, summary)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def _build(config: LanguageConfig, path: Path, progress: bool) -> dict:
    started = time.perf_counter()
    g = config.language
    tokens, labels = generate(g)
    tree = concepts(g)
    split = max(1, int(len(tokens) * TRAIN_SHARE))
    held_tokens, held_labels = tokens[split:], labels[split:]
    with _threads(1):
        _say(progress, f"transformer: {config.transformer.steps} steps on {split} sequences")
        trained = train_transformer(
            config.transformer, tokens[:split], held_tokens, vocabulary_size(g)
        )
        x_ND = residual_activations(trained.model, held_tokens, config.transformer.layer)
    labels_NC = held_labels.reshape(-1, tree.count)
    n = min(config.activation_tokens, len(x_ND))
    x_ND, labels_NC = x_ND[:n], labels_NC[:n]
    np.save(path / "activations.npy", x_ND)
    np.save(path / "labels.npy", labels_NC)
    _say(progress, f"activations: {x_ND.shape}; probing {tree.count} concepts")
    probe_started = time.perf_counter()
    with _threads(1):
        probes = fit_probes(
            x_ND, labels_NC, config.probe.tokens, config.probe.min_accuracy, seed=g.seed
        )
    directions = own_directions(x_ND, labels_NC, edges_from_labels(labels_NC))
    np.save(path / "directions.npy", directions)
    np.save(path / "mean_difference_directions.npy", mean_difference_directions(x_ND, labels_NC))
    np.save(path / "probe_directions.npy", probes.directions_CD)
    probe_seconds = time.perf_counter() - probe_started
    save_file(
        {k: v.detach().contiguous() for k, v in trained.model.state_dict().items()},
        str(path / "transformer.safetensors"),
    )
    agreement = (directions * probes.directions_CD).sum(1)
    concept_records = [
        {
            "concept": c,
            "name": tree.names[c],
            "parent": tree.parent[c],
            "probe_vs_direction_cos": round(float(agreement[c]), 4),
            **probes.probes[c].to_json(),
        }
        for c in range(tree.count)
    ]
    (path / "concepts.json").write_text(
        json.dumps(
            {
                "concepts": concept_records,
                "kept": probes.kept,
                "dropped": [r for r in concept_records if not r["kept"]],
            },
            indent=1,
        )
    )
    summary = {
        "name": config.name,
        "config": asdict(config),
        "tokens": int(n),
        "dim": int(x_ND.shape[1]),
        "concepts": tree.count,
        "kept": len(probes.kept),
        "dropped": [
            {"concept": r["concept"], "name": r["name"], "why": r["why_dropped"]}
            for r in concept_records
            if not r["kept"]
        ],
        "transformer": {
            "train_loss": round(trained.train_loss, 4),
            "test_loss": round(trained.test_loss, 4),
            "entropy_given_state": round(entropy_given_state(g), 4),
            "train_seconds": round(trained.seconds, 2),
            "loss_curve": trained.loss_curve,
            "parameters": sum(p.numel() for p in trained.model.parameters()),
        },
        "probe_seconds": round(probe_seconds, 2),
        "activation_bytes": (path / "activations.npy").stat().st_size,
        "labels_bytes": (path / "labels.npy").stat().st_size,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    (path / "language.json").write_text(json.dumps(summary, indent=1))
    return summary


class _threads:
    """One torch thread: the toy-sized products lose more to hand-offs than a second thread brings, and
    the machine's other core is busy."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)
