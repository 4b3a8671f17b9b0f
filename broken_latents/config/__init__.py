"""The config of an experiment: typed dataclasses (schema.py), read from and written to TOML
(toml_io.py) and changed by `--set` overrides (overrides.py); every error names its field."""

from .overrides import apply_overrides, apply_values
from .errors import ConfigError
from .laws import resolve_spec
from .schema import (
    AuxConfig,
    ExperimentConfig,
    HierarchyConfig,
    InverseConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from .toml_io import dump_toml, from_dict, load_toml, read_json, to_dict

__all__ = [
    "AuxConfig",
    "ConfigError",
    "ExperimentConfig",
    "HierarchyConfig",
    "InverseConfig",
    "SAEConfig",
    "TrainConfig",
    "WorldConfig",
    "apply_overrides",
    "apply_values",
    "dump_toml",
    "from_dict",
    "load_toml",
    "read_json",
    "resolve_spec",
    "to_dict",
]
