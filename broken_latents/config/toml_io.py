"""Configs to and from TOML: the dict <-> dataclass converter, with errors that name the field
(`sae.tied.l1: must be a number, got 'x'`) and list the allowed values; and the JSON files a
user points us at."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from .schema import ConfigError, ExperimentConfig, OneOf, Spec, _require

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def convert(tp: Any, value: Any, where: str) -> Any:
    """`value` (as TOML gives it) checked against the type hint `tp` and converted (a float that is a
    whole number to int, a table to its dataclass); a mismatch raises ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is Spec:
        return value
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        value = convert(base, value, where)
        for extra in extras:
            if isinstance(extra, OneOf):
                allowed = tuple(extra.allowed())
                _require(
                    value in allowed,
                    where,
                    f"must be one of {', '.join(map(repr, allowed))}; got {value!r}",
                )
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        _require(
            value in allowed,
            where,
            f"must be one of {', '.join(map(repr, allowed))}; got {value!r}",
        )
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return convert(args[0], value, where)
    if origin is list:
        _require(isinstance(value, list), where, f"must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [convert(item, v, f"{where}.{_item_name(v, i)}") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        _require(isinstance(value, dict), where, f"must be a table, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        _require(isinstance(value, bool), where, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        _require(ok, where, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        _require(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            where,
            f"must be a number, got {value!r}",
        )
        return float(value)
    if tp is str:
        _require(isinstance(value, str), where, f"must be a string, got {value!r}")
        return value
    raise ConfigError(where, f"unsupported type {_type_name(tp)}")  # pragma: no cover


def _item_name(item: Any, index: int) -> str:
    """How an error names a list entry: by the label typed (sae.tied), else by its index."""
    label = item.get("label") if isinstance(item, dict) else None
    return label if isinstance(label, str) and label else str(index)


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls, include_extras=True)
    flat = cls.flat_tables(data, where) if hasattr(cls, "flat_tables") else {}
    owned = {f.name: table for table, part in flat.items() for f in dataclasses.fields(part)}
    names = [f.name for f in dataclasses.fields(cls) if f.name not in flat] + list(owned)
    aliases = getattr(cls, "value_aliases", {})
    data = {k: aliases.get(k, {}).get(v, v) if isinstance(v, str) else v for k, v in data.items()}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(names))
    if unknown:
        owner = cls.owner_of(unknown[0]) if hasattr(cls, "owner_of") else None
        raise ConfigError(
            f"{prefix}{unknown[0]}",
            f"unknown key{owner or ''}; allowed keys here: {', '.join(names)}",
        )
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        _require(name in data, f"{prefix}{name}", "is required")
    kwargs = {k: convert(hints[k], v, f"{prefix}{k}") for k, v in data.items() if k not in owned}
    for table, part in flat.items():  # owned keys sit flat in the table; their errors name them so
        kwargs[table] = from_dict(
            part, {k: v for k, v in data.items() if owned.get(k) == table}, where
        )
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # Nested __post_init__ names its field relative to its own table; keep the outer path.
        if where and not err.field.startswith(where.split(".")[0]):
            raise ConfigError(
                f"{prefix}{err.field.split('.', 1)[-1]}", str(err).split(": ", 1)[1]
            ) from None
        raise


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict for TOML, dropping None (TOML has no null). A flat field's table is
    merged in, with only the values that differ from its defaults: a table whose `architecture`
    changes (--set) then carries no default of the old one into the new."""
    if dataclasses.is_dataclass(obj):
        flat = getattr(obj, "flat_fields", ())
        out = {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if getattr(obj, f.name) is not None and f.name not in flat
        }
        for name in flat:
            part = getattr(obj, name)
            defaults = to_dict(type(part)())
            out.update({k: v for k, v in to_dict(part).items() if defaults.get(k) != v})
        return out
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


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
