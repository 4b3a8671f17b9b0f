"""The language's generator: its labels follow the concept tree it declares."""

import numpy as np
import pytest

from broken_latents.config.schema import ConfigError
from broken_latents.language.config import GrammarConfig, LanguageConfig, load_language
from broken_latents.language.grammar import concepts, entropy_given_state, generate, vocabulary_size

SMALL = GrammarConfig(
    topics=3, subtopics=2, words=3, filler=4, sequences=400, sequence_length=16, seed=1
)


def test_children_only_with_parents_and_siblings_exclusive():
    tokens, labels = generate(SMALL)
    tree = concepts(SMALL)
    flat = labels.reshape(-1, tree.count)
    for parent, child in tree.edges():
        assert not (flat[:, child] & ~flat[:, parent]).any()
    topics = flat[:, : SMALL.topics]
    subtopics = flat[:, SMALL.topics : SMALL.topics + SMALL.topics * SMALL.subtopics]
    assert (topics.sum(1) == 1).all() and (subtopics.sum(1) == 1).all()
    words = flat[:, SMALL.topics + SMALL.topics * SMALL.subtopics :]
    assert words.sum(1).max() == 1


def test_word_concepts_are_the_tokens_and_topics_hold_for_a_sequence():
    tokens, labels = generate(SMALL)
    first_word = SMALL.topics + SMALL.topics * SMALL.subtopics
    content = tokens >= SMALL.filler
    word_of = np.where(content, tokens - SMALL.filler + first_word, -1)
    for n, b in zip(*np.nonzero(content)):
        assert labels[n, b, word_of[n, b]]
    assert not labels[~content][:, first_word:].any()
    topic = labels[:, :, : SMALL.topics].argmax(-1)
    assert (topic == topic[:, :1]).all()
    assert tokens.max() < vocabulary_size(SMALL)


def test_rates_follow_the_config():
    g = GrammarConfig(
        topics=2,
        subtopics=2,
        words=2,
        filler=3,
        content_rate=0.5,
        sequences=3000,
        sequence_length=20,
    )
    tokens, labels = generate(g)
    content = (tokens[:, 1:] >= g.filler).mean()
    assert abs(content - 0.5) < 0.01
    assert abs(labels[:, :, 0].mean() - 0.5) < 0.03


def test_entropy_floor_in_the_uniform_case():
    # content_rate 1, switch_rate 1, zipf 0: every token is uniform over all content words of the topic.
    g = GrammarConfig(
        topics=2, subtopics=3, words=4, filler=1, content_rate=1.0, switch_rate=1.0, zipf=0.0
    )
    assert entropy_given_state(g) == pytest.approx(np.log(12), abs=1e-9)


def test_bad_values_name_their_field(tmp_path):
    with pytest.raises(ConfigError, match="language.content_rate"):
        GrammarConfig(content_rate=1.5)
    path = tmp_path / "lang.toml"
    path.write_text("[transformer]\nwidth = 30\nheads = 4\n")
    with pytest.raises(ConfigError, match="transformer.width"):
        load_language(path)
    path.write_text("[language]\ntopcs = 3\n")
    with pytest.raises(ConfigError, match="language.topcs"):
        load_language(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_language(tmp_path / "missing.toml")
    assert LanguageConfig().transformer.layers == 2
