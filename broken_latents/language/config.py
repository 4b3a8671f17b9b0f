"""The language world's config: a hierarchy of concepts that generates a token stream, the small
transformer trained on it, and the probes that find each concept's direction in its residual stream.

Declared in TOML like an experiment ([language], [transformer], [probe]); read with the project's
`from_dict`, so a bad value is one `ConfigError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config.errors import ConfigError, require
from ..config.toml_io import from_dict, tomllib


@dataclass
class GrammarConfig:
    """topics -> subtopics -> words. A sequence has one topic (topics exclude each other); inside it a
    current subtopic (one at a time) emits the content words, and may switch at any content word."""

    topics: int = 3
    """Top-level concepts; each sequence draws one, uniformly."""
    subtopics: int = 3
    """Subtopics per topic (children of the topic, mutually exclusive)."""
    words: int = 3
    """Content words per subtopic (children of the subtopic, each its own token)."""
    filler: int = 6
    """Filler tokens shared by every topic (they carry no concept)."""
    content_rate: float = 0.6
    """Probability that a token after the first is a content word (else filler; the first is always content)."""
    switch_rate: float = 0.25
    """Probability that a content word after the first draws a new subtopic (uniform over the topic's, the current one included)."""
    zipf: float = 1.0
    """Words of a subtopic are drawn with probability proportional to 1 / rank^zipf (0: uniform)."""
    sequence_length: int = 32
    """Tokens per sequence (the transformer's context)."""
    sequences: int = 12000
    """Sequences generated: the transformer trains on them; the activations come from the held-out ones."""
    seed: int = 0
    """Seed of the corpus (numpy Generator)."""

    def __post_init__(self) -> None:
        for name in ("topics", "subtopics", "words", "filler", "sequences"):
            require(
                getattr(self, name) >= 1,
                f"language.{name}",
                f"must be >= 1, got {getattr(self, name)}",
            )
        require(
            self.sequence_length >= 2,
            "language.sequence_length",
            f"must be >= 2, got {self.sequence_length}",
        )
        for name in ("content_rate", "switch_rate"):
            value = getattr(self, name)
            require(
                math.isfinite(value) and 0 < value <= 1,
                f"language.{name}",
                f"must lie in (0, 1], got {value}",
            )
        require(
            math.isfinite(self.zipf) and self.zipf >= 0,
            "language.zipf",
            f"must be >= 0, got {self.zipf}",
        )


@dataclass
class TransformerConfig:
    """A GPT-style decoder (pre-LayerNorm blocks, learned positions) trained by next-token prediction."""

    layers: int = 2
    """Transformer blocks."""
    width: int = 64
    """Residual-stream dimension D."""
    heads: int = 4
    """Attention heads (width must divide by it)."""
    steps: int = 400
    """Adam steps."""
    batch_sequences: int = 64
    """Sequences per step."""
    lr: float = 3e-3
    """Adam learning rate (cosine decay to 10% over the steps)."""
    layer: int = 2
    """Residual stream written out: after block `layer` (0 = the embeddings)."""
    seed: int = 0
    """Seed of the initialisation and of the batch order (torch.Generator)."""

    def __post_init__(self) -> None:
        for name in ("layers", "width", "heads", "steps", "batch_sequences"):
            require(
                getattr(self, name) >= 1,
                f"transformer.{name}",
                f"must be >= 1, got {getattr(self, name)}",
            )
        require(
            self.width % self.heads == 0,
            "transformer.width",
            f"must be divisible by transformer.heads ({self.heads}), got {self.width}",
        )
        require(
            math.isfinite(self.lr) and self.lr > 0,
            "transformer.lr",
            f"must be a positive number, got {self.lr}",
        )
        require(
            0 <= self.layer <= self.layers,
            "transformer.layer",
            f"must lie in [0, {self.layers}] (0 = embeddings), got {self.layer}",
        )


@dataclass
class ProbeConfig:
    """One logistic-regression probe per concept on the written activations."""

    tokens: int = 40_000
    """Held-out tokens the probes train on (another as many, when there are, test them)."""
    min_accuracy: float = 0.95
    """A concept is kept only if its probe reaches this test accuracy AND this balanced accuracy
    (mean of the rates on active and inactive tokens: a rare concept cannot pass by always saying no)."""

    def __post_init__(self) -> None:
        require(self.tokens >= 100, "probe.tokens", f"must be >= 100, got {self.tokens}")
        require(
            0 < self.min_accuracy <= 1,
            "probe.min_accuracy",
            f"must lie in (0, 1], got {self.min_accuracy}",
        )


@dataclass
class LanguageConfig:
    name: str = "language"
    """Short name of the language world."""
    language: GrammarConfig = field(default_factory=GrammarConfig)
    """[language]: the concept hierarchy and the corpus it generates."""
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    """[transformer]: the network trained on the corpus."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """[probe]: the per-concept linear probes that give the ground-truth directions."""
    activation_tokens: int = 100_000
    """Tokens of held-out sequences whose residual stream is written (at most what they hold)."""

    def __post_init__(self) -> None:
        require(
            self.activation_tokens >= 1000,
            "activation_tokens",
            f"must be >= 1000, got {self.activation_tokens}",
        )


def load_language(path: Path) -> LanguageConfig:
    """Read a language TOML; a bad file or value raises ConfigError naming it."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("CONFIG", f"no such file: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("CONFIG", f"{path} is not valid TOML: {err}") from None
    return from_dict(LanguageConfig, data)
