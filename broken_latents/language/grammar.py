"""The language: a known tree of concepts generating tokens, with the concepts active at every token.

Concepts, in label order: the topics, then the subtopics (topic t's are t*S ... t*S+S-1), then the
content words (subtopic s's are s*W ... s*W+W-1). At token b of a sequence of topic t whose current
subtopic is s, concepts t and s are active, and the word concept too where the token is a content
word: a child is only ever active with its parent, siblings never together. Tokens: the filler
tokens 0 .. filler-1, then one token per content word.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import GrammarConfig


@dataclass
class Concepts:
    names: list[str]
    """One per concept: "topic0", "topic0.sub1", "topic0.sub1.word2"."""
    parent: list[int]
    """Index of each concept's parent, -1 for a topic."""

    @property
    def count(self) -> int:
        return len(self.names)

    def edges(self) -> list[tuple[int, int]]:
        """(parent, child) for every edge of the tree."""
        return [(p, c) for c, p in enumerate(self.parent) if p >= 0]

    def hierarchy(self) -> list[dict]:
        """The edges as [world.hierarchy] relations ({parent, children}), one per parent."""
        children: dict[int, list[int]] = {}
        for p, c in self.edges():
            children.setdefault(p, []).append(c)
        return [{"parent": p, "children": cs} for p, cs in children.items()]


def concepts(g: GrammarConfig) -> Concepts:
    names, parent = [], []
    for t in range(g.topics):
        names.append(f"topic{t}")
        parent.append(-1)
    for t in range(g.topics):
        for s in range(g.subtopics):
            names.append(f"topic{t}.sub{s}")
            parent.append(t)
    n_sub = g.topics * g.subtopics
    for sub in range(n_sub):
        for w in range(g.words):
            names.append(f"{names[g.topics + sub]}.word{w}")
            parent.append(g.topics + sub)
    return Concepts(names, parent)


def vocabulary_size(g: GrammarConfig) -> int:
    return g.filler + g.topics * g.subtopics * g.words


def generate(
    g: GrammarConfig, sequences: int | None = None, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [n, L] int64, labels [n, L, C] bool) of n sequences of length L."""
    n = g.sequences if sequences is None else sequences
    L, S, W = g.sequence_length, g.subtopics, g.words
    rng = np.random.default_rng(g.seed if seed is None else seed)
    word_p = 1.0 / np.arange(1, W + 1) ** g.zipf
    word_p /= word_p.sum()

    topic_n = rng.integers(0, g.topics, size=n)
    content_nL = rng.random((n, L)) < g.content_rate
    content_nL[:, 0] = True
    # A new subtopic is drawn at the first token and, with switch_rate, at each later content word.
    switch_nL = content_nL & (rng.random((n, L)) < g.switch_rate)
    switch_nL[:, 0] = True
    draws_nL = rng.integers(0, S, size=(n, L))
    # The subtopic in force at each token: the draw at the latest switch up to it.
    last_switch_nL = np.maximum.accumulate(np.where(switch_nL, np.arange(L), 0), axis=1)
    local_sub_nL = np.take_along_axis(draws_nL, last_switch_nL, axis=1)
    sub_nL = topic_n[:, None] * S + local_sub_nL  # global subtopic index
    word_nL = rng.choice(W, size=(n, L), p=word_p)
    filler_nL = rng.integers(0, g.filler, size=(n, L))
    content_word_nL = sub_nL * W + word_nL
    tokens = np.where(content_nL, g.filler + content_word_nL, filler_nL).astype(np.int64)

    C = g.topics + g.topics * S + g.topics * S * W
    labels = np.zeros((n, L, C), dtype=bool)
    rows, cols = np.indices((n, L))
    labels[rows, cols, topic_n[:, None].repeat(L, 1)] = True
    labels[rows, cols, g.topics + sub_nL] = True
    word_concept = g.topics + g.topics * S + content_word_nL
    labels[rows[content_nL], cols[content_nL], word_concept[content_nL]] = True
    return tokens, labels


def entropy_given_state(g: GrammarConfig) -> float:
    """Entropy (nats) of the next token given the true topic and subtopic: the loss of a model that
    knew the hidden state exactly, a floor no network reaches (it must infer the state from context)."""
    S, W = g.subtopics, g.words
    word_p = 1.0 / np.arange(1, W + 1) ** g.zipf
    word_p /= word_p.sum()
    # Next token: filler (uniform) or a content word of the current subtopic, or, after a switch, of any
    # of the topic's subtopics (the current one again with 1/S).
    stay = (1 - g.switch_rate) + g.switch_rate / S
    p_words = (
        np.concatenate([stay * word_p] + [g.switch_rate / S * word_p] * (S - 1)) * g.content_rate
    )
    p_filler = np.full(g.filler, (1 - g.content_rate) / g.filler)
    p = np.concatenate([p_words, p_filler])
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
