"""The post's questions asked of a trained network: SAEs on the residual stream of a small transformer
trained on a synthetic language whose concepts (topics -> subtopics -> words) are known.

The language world (examples/language.toml, `broken_latents.language`) is built once into the cache
folder by the first run that reads it. The truth per concept is its difference of class means on the
activations (the direction the SAEs' decoders meet; the logistic probe's direction is written beside
it, and its accuracy decides which concepts are kept).
"""

from __future__ import annotations

import numpy as np

from .checks import Runs
from .claims import Claim
from .registry import Experiment, register
from ..analysis.metrics import CLEAN_COS, WorldMetrics
from ..analysis.score import load_score_model
from ..config.schema import AuxConfig, ExperimentConfig, SAEConfig, TrainConfig, WorldConfig
from ..language.cache import files_of
from ..language.config import LanguageConfig

LANGUAGE = LanguageConfig()
"""The default language world, the one examples/language.toml writes out (a test holds them equal)."""
LATENTS = 64
SAMPLES = 2_000_000
L1 = 1.0
"""On residual norms near 45 (centred), l1 = 1 gives the ReLU SAEs an L0 of 18-21 at 2M samples."""


def language_saes() -> list[SAEConfig]:
    aux = AuxConfig(coefficient=1_000.0, delay_samples=SAMPLES // 3, warmup_samples=SAMPLES // 3)
    return [
        SAEConfig(label="tied", architecture="tied", latents=LATENTS, l1=L1),
        SAEConfig(label="untied", architecture="untied", latents=LATENTS, l1=L1),
        SAEConfig(
            label="topk", architecture="untied", latents=LATENTS, activation="topk", k=4, l1=0.0
        ),
        SAEConfig(
            label="matryoshka",
            architecture="untied",
            latents=LATENTS,
            activation="batchtopk",
            k=4,
            l1=0.0,
            matryoshka_widths=[4, 16, LATENTS],
        ),
        SAEConfig(label="tied-aux", architecture="tied", latents=LATENTS, l1=L1, aux=aux),
    ]


def concept_kinds(world: WorldMetrics) -> dict[str, list[int]]:
    """Indices (into the kept concepts) of the topics, subtopics and words: a topic has no parent,
    a subtopic's parent is a topic, a word's parent a subtopic."""
    parent = {c: p for p, c in world.extra.get("edges", [])}
    n = len(world.extra.get("concepts", []))
    depth = {}
    for c in range(n):
        d, node = 0, c
        while node in parent:
            node, d = parent[node], d + 1
        depth[c] = d
    return {
        kind: [c for c in range(n) if depth[c] == d]
        for d, kind in enumerate(["topic", "subtopic", "word"])
    }


def learned(run, concepts: list[int]) -> list[int]:
    return [c for c in concepts if c in run.learned_features]


def learns_at_least(label: str, kind: str, share: float):
    def check(runs: Runs, world: WorldMetrics):
        concepts = concept_kinds(world)[kind]
        got = learned(runs[label], concepts)
        return len(got) >= share * len(
            concepts
        ), f"{label} learned {len(got)}/{len(concepts)} {kind}s (|cos| >= {CLEAN_COS})"

    return check


def learns_more(a: str, b: str):
    def check(runs: Runs, world: WorldMetrics):
        na, nb = len(runs[a].learned_features), len(runs[b].learned_features)
        return na > nb, f"{a} learned {na} concepts, {b} {nb}"

    return check


def mean_absorption(run, concepts: list[int]) -> float:
    return float(np.mean([run.absorption[c] for c in concepts])) if concepts else 0.0


def parents_absorbed_more(label: str):
    """Topics (parents of everything) lose more of themselves to other latents than words (leaves)."""

    def check(runs: Runs, world: WorldMetrics):
        kinds = concept_kinds(world)
        run = runs[label]
        topics, words = mean_absorption(run, kinds["topic"]), mean_absorption(run, kinds["word"])
        return topics > words, f"{label}: mean absorption topics {topics:.2f}, words {words:.2f}"

    return check


def only_learns_topics(label: str):
    """`label` has a clean latent for some topic, and no other SAE has one for any."""

    def check(runs: Runs, world: WorldMetrics):
        topics = concept_kinds(world)["topic"]
        per_sae = {name: len(learned(run, topics)) for name, run in runs.items()}
        holds = per_sae[label] >= 1 and not any(n for name, n in per_sae.items() if name != label)
        detail = ", ".join(f"{name} {n}/{len(topics)}" for name, n in per_sae.items())
        return holds, f"clean topic latents: {detail}"

    return check


def detection(run) -> tuple[int, int, int]:
    """(broken by the truth, flagged by the detector's score, both) among the SAE's latents."""
    threshold = load_score_model().threshold
    truth = run.truth_broken or []
    flagged = [score >= threshold for score in run.broken_score or []]
    return sum(truth), sum(flagged), sum(t and f for t, f in zip(truth, flagged))


def detector_finds(label: str, at_least: float):
    """The detector (its calibrated broken score, from weights and activations alone) against the truth
    (best |cos| < 0.95 with every concept's direction, or firing F1 < 0.9 for the closest one)."""

    def check(runs: Runs, world: WorldMetrics):
        truth, flagged, both = detection(runs[label])
        recall, precision = both / max(truth, 1), both / max(flagged, 1)
        return min(recall, precision) >= at_least, (
            f"{label}: {truth} latents broken by the truth, {flagged} flagged, "
            f"precision {precision:.2f}, recall {recall:.2f}"
        )

    return check


def no_concept_learned(labels: list[str]):
    """None of these SAEs has a latent at |cos| >= 0.95 with any concept's own direction."""

    def check(runs: Runs, world: WorldMetrics):
        counts = {label: len(runs[label].learned_features) for label in labels}
        return not any(counts.values()), "clean latents: " + ", ".join(
            f"{k} {v}" for k, v in counts.items()
        )

    return check


def absorbs_topics_less(a: str, b: str):
    def check(runs: Runs, world: WorldMetrics):
        topics = concept_kinds(world)["topic"]
        ta, tb = mean_absorption(runs[a], topics), mean_absorption(runs[b], topics)
        return ta < tb, f"mean absorption of the topics: {a} {ta:.2f}, {b} {tb:.2f}"

    return check


LANGUAGE_FILES = files_of(LANGUAGE)

register(
    Experiment(
        ExperimentConfig(
            name="language-saes",
            description="Five SAEs (tied, untied, TopK, Matryoshka BatchTopK, tied + aux loss) on the residual stream "
            "of a 2-layer transformer trained on a language of 3 topics x 3 subtopics x 3 words",
            world=WorldConfig(held_out=0.2, **LANGUAGE_FILES),
            train=TrainConfig(
                samples=SAMPLES, batch_size=1024, lr=3e-3, seeds=2, eval_samples=50_000
            ),
            sae=language_saes(),
        ),
        [
            Claim(
                "plain-saes-merge",
                "tied, untied, TopK and tied + aux have no latent at |cos| >= 0.95 with any concept's own "
                "direction (what it adds beyond its parent)",
                "broken latents ... merging the parent and child features",
                no_concept_learned(["tied", "untied", "topk", "tied-aux"]),
            ),
            Claim(
                "only-matryoshka-topic",
                "Matryoshka is the only SAE with a latent at |cos| >= 0.95 for a topic (a root concept)",
                "Matryoshka SAEs ... the narrow prefixes hold the parents",
                only_learns_topics("matryoshka"),
            ),
            Claim(
                "topics-absorbed",
                "untied ReLU: the topics' mean absorption fraction is above the words'",
                "the parent is absorbed into the child latents",
                parents_absorbed_more("untied"),
            ),
            Claim(
                "tied-absorbs-topics-less",
                "tied ReLU absorbs the topics less than untied ReLU (mean absorption fraction)",
                "tied SAEs ... solve absorption",
                absorbs_topics_less("tied", "untied"),
            ),
            Claim(
                "detector-finds-untied",
                "the detector's broken score (weights and activations only) flags the untied SAE's "
                "truth-broken latents with precision and recall >= 0.9",
                "broken latents ... can be found",
                detector_finds("untied", 0.9),
            ),
        ],
    )
)
