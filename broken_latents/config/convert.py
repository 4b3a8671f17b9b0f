"""The one dict <-> dataclass converter. Configs (TOML), metrics.json and inspect.json are read
and written through it: a field's type hint says what its value must be, and a value that does
not fit raises the file's own error naming where it is (`sae.tied.l1: must be a number, got 'x'`,
`runs[0].seed: expected an integer, got a string`), with the allowed values where there is a list
of them. A `Dialect` holds what differs between the files: the wording and the error raised.

Why not a library: cattrs 26 (tried on our config dataclasses) accepts `train.samples = 2.5` as 2
and `train.unit_norm_decoder = "no"` as true, and words a bad value `invalid value for type,
expected int @ $.train.samples` (no value, an SAE by index `$.sae[0]` instead of its label, an
unknown key as `extra fields found (sampels) @ $.train` without the allowed keys). Keeping our
messages meant replacing its hook for every type we use, which left it nothing but dispatch.

Hooks a dataclass may define (class attributes, all optional): `flat_tables` / `flat_fields` (a
field whose table is written flat into this one's), `owner_of` (names who owns an unknown key),
`value_aliases` (old values read as new ones), `KEEP_NULL` (optional fields written as null), and
a field `extra` (keys this version does not know are kept there instead of refused)."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class OneOf:
    """A string field whose allowed values are known only at run time (e.g. registered names):
    `Annotated[str, OneOf(function returning the allowed values)]`."""

    allowed: Callable[[], typing.Sequence[str]]


@dataclass(frozen=True)
class Unchecked:
    """`Annotated[T, Unchecked()]`: the value is taken as read; the dataclass's `__post_init__`
    checks it (a per-feature spec names all its forms in one message)."""


def json_kind(value: Any) -> str:
    """What a JSON value is, in words."""
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number")


@dataclass(frozen=True)
class Dialect:
    """How one kind of file says what is wrong with a value."""

    error: Callable[[str, str], Exception]
    """(where, message) -> the exception raised."""
    mismatch: Callable[[str, Any], str]
    """(what the value must be, e.g. 'an integer'; the value) -> the message."""
    item: Callable[[str, Any, int], str]
    """(where the list is, one of its items, the item's index) -> where the item is."""
    required: str
    """The message for a required key that is missing."""
    table: str
    """How a message names a table (what a dataclass is read from)."""
    names: dict[type, str]
    """How a message names a plain type, where the file's words differ from JSON's (`_KINDS`)."""
    exact_numbers: bool
    """True: numbers stay as the file wrote them, so a file read and written again is the same bytes.
    False: a whole float is read as an int and an int as a float where the field says so."""


def _item_by_label(where: str, item: Any, index: int) -> str:
    """How a config error names a list entry: by the label typed (sae.tied), else by its index."""
    label = item.get("label") if isinstance(item, dict) else None
    return f"{where}.{label if isinstance(label, str) and label else index}"


CONFIG = Dialect(
    error=ConfigError,
    mismatch=lambda what, value: f"must be {what}, got {value!r}",
    item=_item_by_label,
    required="is required",
    table="a table",
    names={bool: "true or false", dict: "a table"},
    exact_numbers=False,
)
"""TOML configs: `sae.tied.l1: must be a number, got 'x'`."""

_KINDS: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    list: ("a list", lambda v: isinstance(v, list)),
    dict: ("an object", lambda v: isinstance(v, dict)),
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("a boolean", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
}
"""A plain type -> (how a message names it, whether a value is one)."""


def structure(tp: Any, value: Any, where: str = "", dialect: Dialect = CONFIG) -> Any:
    """`value` (as TOML or JSON gives it) checked against the type hint `tp` and built (a table
    into its dataclass); a mismatch raises `dialect.error` naming `where`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        if any(isinstance(extra, Unchecked) for extra in extras):
            return value
        value = structure(base, value, where, dialect)
        for extra in extras:
            if isinstance(extra, OneOf):
                _one_of(tuple(extra.allowed()), value, where, dialect)
        return value
    if origin is Literal:
        _one_of(typing.get_args(tp), value, where, dialect)
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        first, *others = [a for a in typing.get_args(tp) if a is not type(None)]
        for option in others:  # e.g. a matrix, or the name of the .npy file holding it
            try:
                return structure(option, value, where, dialect)
            except dialect.error:
                pass
        return structure(first, value, where, dialect)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise dialect.error(
                where or "the file",
                dialect.mismatch(dialect.table, value),
            )
        return _build(tp, value, where, dialect)
    plain = origin or tp
    if plain not in _KINDS:  # pragma: no cover - a schema with a type this converter lacks
        raise dialect.error(where, f"unsupported type {tp}")
    what, fits = _KINDS[plain]
    if (
        not dialect.exact_numbers
        and plain is int
        and isinstance(value, float)
        and value.is_integer()
    ):
        value = int(value)
    if not fits(value):
        raise dialect.error(where, dialect.mismatch(dialect.names.get(plain, what), value))
    if plain is float and not dialect.exact_numbers:
        return float(value)
    if plain is list:
        (item,) = typing.get_args(tp) or (Any,)
        if item is Any:
            return value
        return [structure(item, v, dialect.item(where, v, i), dialect) for i, v in enumerate(value)]
    return value


def _one_of(allowed: tuple, value: Any, where: str, dialect: Dialect) -> None:
    if value not in allowed:
        raise dialect.error(where, f"must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _build(cls: type, data: dict, where: str, dialect: Dialect) -> Any:
    """Dataclass `cls` from the dict `data`: unknown keys refused (or kept in its `extra` field),
    required ones demanded, every value structured by its field's hint."""
    fields = dataclasses.fields(cls)
    flat = cls.flat_tables(data, where) if hasattr(cls, "flat_tables") else {}
    owned = {f.name: table for table, part in flat.items() for f in dataclasses.fields(part)}
    names = [f.name for f in fields if f.name not in flat and f.name != "extra"] + list(owned)
    aliases = getattr(cls, "value_aliases", {})
    if aliases:
        data = {
            k: aliases.get(k, {}).get(v, v) if isinstance(v, str) else v for k, v in data.items()
        }
    prefix = f"{where}." if where else ""
    known = set(names)
    unknown = [k for k in data if k not in known]
    kwargs: dict[str, Any] = {}
    if any(f.name == "extra" for f in fields):
        kwargs["extra"] = {k: data[k] for k in unknown}
    elif unknown:
        first = sorted(unknown)[0]
        owner = cls.owner_of(first) if hasattr(cls, "owner_of") else None
        raise dialect.error(
            f"{prefix}{first}", f"unknown key{owner or ''}; allowed keys here: {', '.join(names)}"
        )
    hints = _hints(cls)
    for f in fields:
        if f.name in data and f.name not in owned and f.name not in flat:
            kwargs[f.name] = structure(hints[f.name], data[f.name], f"{prefix}{f.name}", dialect)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise dialect.error(f"{prefix}{f.name}", dialect.required)
    for table, part in flat.items():  # owned keys sit flat in the table; their errors name them so
        kwargs[table] = _build(
            part, {k: v for k, v in data.items() if owned.get(k) == table}, where, dialect
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


_PLAIN = (int, float, str, bool, type(None))


def unstructure(obj: Any) -> Any:
    """A dataclass (nested ones, lists and dicts of them too) -> plain dicts and lists, fields in
    their order, then the `extra` keys. None is left out (TOML has no null) unless the class keeps
    it (`KEEP_NULL`); a numpy array becomes rounded lists (a large matrix not yet written out). A
    flat field's table is merged in with only the values that differ from its defaults: a table
    whose `architecture` changes (--set) then carries no default of the old one into the new."""
    if isinstance(obj, _PLAIN):
        return obj
    if dataclasses.is_dataclass(obj):
        keep_null = getattr(obj, "KEEP_NULL", ())
        flat = getattr(obj, "flat_fields", ())
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if (
                f.name != "extra"
                and f.name not in flat
                and (value is not None or f.name in keep_null)
            ):
                out[f.name] = unstructure(value)
        for name in flat:
            part = getattr(obj, name)
            defaults = unstructure(type(part)())
            out.update({k: v for k, v in unstructure(part).items() if defaults.get(k) != v})
        return {**out, **getattr(obj, "extra", {})}
    if isinstance(obj, np.ndarray):
        return np.round(obj.astype(np.float64), 4).tolist()
    if isinstance(obj, list):
        return (
            list(obj) if all(isinstance(v, _PLAIN) for v in obj) else [unstructure(v) for v in obj]
        )
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items()}
    return obj
