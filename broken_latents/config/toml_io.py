"""Configs to and from TOML, through the one dict <-> dataclass converter (convert.py), whose
errors name the field (`sae.tied.l1: must be a number, got 'x'`) and list the allowed values;
and the JSON files a user points us at."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .convert import structure, unstructure
from .errors import ConfigError
from .schema import ExperimentConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, rejecting unknown keys and wrong types."""
    return structure(cls, data, where)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict for TOML (no None: TOML has no null)."""
    return unstructure(obj)


def read_json(path: Path, field: str) -> Any:
    """A JSON file the user pointed us at; invalid JSON is a ConfigError naming `field`."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(field, f"{path} is not valid JSON: {err}") from None


def load_toml(path: Path) -> ExperimentConfig:
    """Read an experiment TOML; a bad file raises ConfigError naming the file and field."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("TARGET", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError(
            "TARGET", f"{path} is a directory; give a .toml file or a registered name"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("TARGET", f"{path} is not valid TOML: {err}") from None
    return from_dict(ExperimentConfig, data)


def dump_toml(config: ExperimentConfig) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(config))
