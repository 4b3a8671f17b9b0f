"""broken-latents: SAEs, feature co-occurrence and broken latents in toy worlds."""

__version__ = "0.1.0"
