"""The language world end to end on a tiny config (seconds): files, the network's loss, probes that
keep what the network represents and drop what it cannot."""

import json


import numpy as np
import pytest

from broken_latents.language import (
    GrammarConfig,
    LanguageConfig,
    ProbeConfig,
    TransformerConfig,
    build_language,
)
from broken_latents.language.grammar import entropy_given_state

pytestmark = pytest.mark.slow  # trains two small transformers (about 10 s on an idle host)

GRAMMAR = GrammarConfig(
    topics=2, subtopics=2, words=2, filler=3, sequence_length=12, sequences=1200, seed=3
)


def tiny(layer: int) -> LanguageConfig:
    return LanguageConfig(
        name="tiny",
        language=GRAMMAR,
        activation_tokens=4000,
        probe=ProbeConfig(tokens=2000),
        transformer=TransformerConfig(
            layers=1, width=32, heads=2, steps=150, batch_sequences=32, lr=1e-2, layer=layer
        ),
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_language(tiny(layer=1), tmp_path_factory.mktemp("lang") / "world")


def test_files_have_the_stated_shapes(built):
    x = np.load(built.directory / "activations.npy", mmap_mode="r")
    labels = np.load(built.directory / "labels.npy")
    assert x.shape == (4000, 32) and x.dtype == np.float32
    assert labels.shape == (4000, 2 + 4 + 8) and labels.dtype == bool
    assert np.load(built.directory / "directions.npy").shape == (14, 32)
    summary = json.loads((built.directory / "language.json").read_text())
    assert summary["activation_bytes"] == (built.directory / "activations.npy").stat().st_size


def test_transformer_learns_the_language(built):
    # Uniform over the 11 tokens costs log 11 = 2.40 nats; knowing the hidden state exactly, the floor.
    floor = entropy_given_state(GRAMMAR)
    loss = built.summary["transformer"]["test_loss"]
    assert floor - 0.02 < loss < floor + 0.15, (loss, floor)


def test_probes_keep_what_the_network_represents(built):
    concepts = json.loads((built.directory / "concepts.json").read_text())["concepts"]
    for record in concepts:
        if record["kept"]:
            assert record["accuracy"] >= 0.95 and record["balanced_accuracy"] >= 0.95
    # The token's own word is in the residual stream after one block.
    words = [r for r in concepts if ".word" in r["name"]]
    assert all(r["kept"] for r in words)


def test_embeddings_alone_cannot_tell_the_topic_at_a_filler_token(tmp_path):
    built = build_language(tiny(layer=0), tmp_path / "embeddings")
    dropped = {d["name"] for d in built.summary["dropped"]}
    assert {
        "topic0",
        "topic1",
    } <= dropped  # the topic is context: a single token's embedding lacks it
    assert not any(".word" in name for name in dropped)
