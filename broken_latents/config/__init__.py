"""The config of an experiment: typed dataclasses (schema.py), read from and written to TOML
(toml_io.py) and changed by `--set` overrides (overrides.py); every error names its field."""

from .overrides import apply_overrides, apply_values
from .schema import (
    AuxConfig,
    ConfigError,
    ExperimentConfig,
    HierarchyConfig,
    InverseConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
    resolve_spec,
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
