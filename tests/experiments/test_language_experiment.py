"""The language experiment's declarations: its world is the example's, its checks read what they claim."""

from pathlib import Path

from factories import matches, run_metrics, world_metrics

from broken_latents.experiments import EXPERIMENTS
from broken_latents.experiments.language import (
    LANGUAGE,
    concept_kinds,
    detector_finds,
    learns_at_least,
    parents_absorbed_more,
)
from broken_latents.language import load_language

ROOT = Path(__file__).resolve().parents[2]
# Topic 0 -> subtopic 1 -> words 2, 3; topic 4 -> subtopic 5 -> word 6.
WORLD = world_metrics(
    7, extra={"concepts": list(range(7)), "edges": [[0, 1], [1, 2], [1, 3], [4, 5], [5, 6]]}
)


def test_registered_with_the_example_world():
    assert load_language(ROOT / "examples" / "language.toml") == LANGUAGE
    config = EXPERIMENTS["language-saes"].config
    assert config.world.activations.endswith("activations.npy") and "language" in config.name
    assert {s.label for s in config.sae} == {"tied", "untied", "topk", "matryoshka", "tied-aux"}


def test_concept_kinds_from_the_edges():
    assert concept_kinds(WORLD) == {"topic": [0, 4], "subtopic": [1, 5], "word": [2, 3, 6]}


def test_checks_read_learned_concepts_absorption_and_peaks():
    run = run_metrics(
        [[0.0] * 7] * 4,
        label="untied",
        learned_features=[2, 3],
        matches=matches((0, 2, 0.99), (1, 3, 0.97)),
        absorption=[0.9, 0.5, 0.1, 0.2, 0.7, 0.4, 0.3],
        truth_broken=[False, True, True, True],
        broken_score=[0.1, 0.99, 0.99, 0.0],
    )
    holds, detail = learns_at_least("untied", "word", 0.6)({"untied": run}, WORLD)
    assert holds and "2/3 words" in detail
    holds, detail = parents_absorbed_more("untied")({"untied": run}, WORLD)
    assert holds and "topics 0.80, words 0.20" in detail
    holds, detail = detector_finds("untied", 0.6)({"untied": run}, WORLD)
    assert holds and "precision 1.00, recall 0.67" in detail
    assert not detector_finds("untied", 0.9)({"untied": run}, WORLD)[0]
