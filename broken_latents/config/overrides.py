"""`--set KEY=VALUE`: change a config by dotted keys. `sae.LABEL.key` or `sae.INDEX.key` address
one SAE, `sae.*.key` all, `key[i]` one element of a list (`world.firing[0]=0.3`)."""

from __future__ import annotations

import re
import sys
from typing import Any

from .errors import ConfigError, require
from .laws import resolve_spec
from .schema import ExperimentConfig, WorldConfig
from .toml_io import from_dict, to_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _parse_value(text: str) -> Any:
    """A TOML value if it parses as one (numbers, booleans, lists, tables), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: ExperimentConfig, assignments: list[str]) -> ExperimentConfig:
    """Apply `KEY=VALUE` strings; `sae.LABEL.key` or `sae.INDEX.key` address one SAE, `sae.*.key` all,
    `key[i]` one element of a list (`world.firing[0]=0.3`; a number or {linear} is expanded first)."""
    pairs = []
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        require(
            bool(sep) and bool(key.strip()),
            "--set",
            f"expects KEY=VALUE as one argument (e.g. --set train.lr=1e-3), got {assignment!r}",
        )
        pairs.append((key.strip(), _parse_value(raw.strip())))
    return apply_values(config, pairs)


def apply_values(config: ExperimentConfig, pairs: list[tuple[str, Any]]) -> ExperimentConfig:
    """Apply (KEY, value) pairs, values already parsed (e.g. from a sweep spec), in order."""
    data = to_dict(config)
    for key, value in pairs:
        require(isinstance(key, str) and bool(key), "--set", f"expects a dotted key, got {key!r}")
        parts = _split_key(key)
        for target, rest in _resolve_targets(data, parts, key):
            target[rest] = value
    return from_dict(ExperimentConfig, data)


_INDEX = re.compile(r"^([^\[\]]*)((?:\[\d+\])+)$")


def _split_key(key: str) -> list[str | int]:
    """`world.firing[0]` -> ["world", "firing", 0]; `sae.tied.l1` -> ["sae", "tied", "l1"]."""
    parts: list[str | int] = []
    for part in key.split("."):
        if "[" not in part and "]" not in part:
            require(
                bool(part), key, "empty part in the key; write it like train.lr or world.firing[0]"
            )
            parts.append(part)
            continue
        match = _INDEX.match(part)
        require(
            bool(match) and bool(match.group(1)),
            key,
            "list elements are written NAME[INDEX], e.g. world.firing[0]",
        )
        parts.append(match.group(1))
        parts.extend(int(i) for i in re.findall(r"\d+", match.group(2)))
    return parts


def _resolve_targets(data: dict, parts: list[str | int], key: str) -> list[tuple[Any, str | int]]:
    """The (holder, slot) pairs that `key` assigns: `holder[slot] = value`."""
    slots: list[tuple[Any, str | int]] = [({"": data}, "")]
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = _dotted(parts[:depth]) or "the config"
        nxt = []
        for holder, slot in slots:
            node = holder[slot]
            if isinstance(part, int):
                if not isinstance(node, list):
                    node = _expand(data, parts, depth, node, key)
                    holder[slot] = node
                require(part < len(node), key, f"{here}: index out of range (0..{len(node) - 1})")
                nxt.append((node, part))
            elif isinstance(node, list) and not last:
                nxt.extend(
                    (node, i) for i in _pick_items(node, part, _dotted(parts[: depth + 1]), key)
                )
            elif isinstance(node, dict):
                if part not in node and not last:
                    # A missing table may be created (sae.tied.aux.coefficient creates [sae.aux]); a missing list
                    # cannot (world.firng[0] is a typo of world.firing[0]), so say so as an unknown key does.
                    require(
                        not isinstance(parts[depth + 1], int),
                        _dotted(parts[: depth + 1]),
                        f"unknown key; allowed keys here: {', '.join(node)}",
                    )
                    node[part] = {}
                nxt.append((node, part))
            elif last:
                raise ConfigError(
                    key, "must address a key inside a table, e.g. train.lr or sae.tied.l1"
                )
            else:
                raise ConfigError(key, f"{here} is a value, not a table")
        slots = nxt
    return slots


def _dotted(parts: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _expand(data: dict, parts: list, depth: int, value: Any, key: str) -> list:
    """A per-feature world value given as a number or {linear}, as the list it stands for, so one
    element can be set (world.firing[0]=0.3)."""
    name = _dotted(parts[:depth])
    spec = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        or isinstance(value, dict)
        and set(value) == {"linear"}
    )
    require(parts[0] == "world" and spec, key, f"{name} is not a list")
    features = data.get("world", {}).get("features", WorldConfig.features)
    require(
        isinstance(features, int) and features >= 1,
        "world.features",
        f"must be >= 1, got {features!r}",
    )
    return resolve_spec(value, features, name)


def _pick_items(items: list, part: str, where: str, key: str) -> list[int]:
    if part == "*":
        return list(range(len(items)))
    if part.isdigit():
        require(int(part) < len(items), key, f"{where}: index out of range (0..{len(items) - 1})")
        return [int(part)]
    labelled = [
        i for i, item in enumerate(items) if isinstance(item, dict) and item.get("label") == part
    ]
    labels = [item.get("label") for item in items if isinstance(item, dict)]
    require(
        bool(labelled), key, f"no entry labelled {part!r}; use an index, '*' or one of {labels}"
    )
    return labelled
