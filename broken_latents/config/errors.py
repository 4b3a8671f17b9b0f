"""The error every bad input becomes: a `ConfigError` names the dotted field and what is allowed,
so the CLI prints one line and exits 2 instead of a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value; `field` is the dotted path, e.g. `sae.tied.l1`."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def require(ok: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless `ok`."""
    if not ok:
        raise ConfigError(field, message)
