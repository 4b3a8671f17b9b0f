"""sweep.json as typed dataclasses, and what a cell's training hands back.

`to_json` gives the file's dict, keys in DESIGN's order ("Sweep spec and directory"), nulls kept
(a cell's `error` is null when it did not fail); `from_json` reads it back, so the two round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pending", "done", "failed"]


@dataclass
class ClaimCount:
    """One mapped claim in one cell."""

    held: int
    """Seeds where the claim held."""
    seeds: int
    """Seeds run."""
    holds: bool
    """The overall verdict (held in at least two thirds of the seeds)."""

    def to_json(self) -> dict[str, Any]:
        return {"held": self.held, "seeds": self.seeds, "holds": self.holds}

    @classmethod
    def from_json(cls, data: dict) -> "ClaimCount":
        return cls(held=data["held"], seeds=data["seeds"], holds=data["holds"])


@dataclass
class CellResult:
    """What training one cell hands back to the sweep (across processes or Ray): never an exception."""

    status: Status
    claims: dict[str, ClaimCount] = field(default_factory=dict)
    """The mapped claims' counts (done cells)."""
    error: str | None = None
    """Why the cell failed (failed cells)."""
    wall_seconds: float | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """The mapped per-run scalars' means over seeds, by SAE label then metric (done cells)."""
    invalid: bool = False
    """Failed because its config is refused (a rerun will not help; the spec must change)."""
    archive: bytes | None = None
    """Ray: the run directory as a tar archive, unpacked by the driver."""


@dataclass
class CellRecord:
    """One cell of the grid in sweep.json."""

    values: dict[str, Any]
    """Axis key -> this cell's value, in the axes' order."""
    status: Status
    error: str | None
    claims: dict[str, ClaimCount]
    path: str
    """The cell's run directory, relative to the sweep directory (`cells/NAME`)."""
    wall_seconds: float | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """The mapped per-run scalars' means over seeds, by SAE label then metric."""
    invalid: bool = False
    """A failed cell whose config the spec's values make invalid (written only when true)."""

    def to_json(self) -> dict[str, Any]:
        out = {
            "values": self.values,
            "status": self.status,
            "error": self.error,
            "claims": {cid: count.to_json() for cid, count in self.claims.items()},
            "metrics": self.metrics,
            "path": self.path,
            "wall_seconds": self.wall_seconds,
        }
        return {**out, "invalid": True} if self.invalid else out

    @classmethod
    def from_json(cls, data: dict) -> "CellRecord":
        return cls(
            values=data["values"],
            status=data["status"],
            error=data.get("error"),
            claims={cid: ClaimCount.from_json(c) for cid, c in data.get("claims", {}).items()},
            path=data["path"],
            wall_seconds=data.get("wall_seconds"),
            metrics=data.get("metrics", {}),
            invalid=bool(data.get("invalid", False)),
        )


@dataclass
class SweepRecord:
    """sweep.json: the spec as resolved, and every cell."""

    base: str
    seeds: int
    claims: list[str]
    """The claims mapped."""
    set: dict[str, Any]
    """The spec's [set] table, flattened to dotted keys."""
    axes: dict[str, list]
    cells: list[CellRecord]
    metrics: list[str] = field(default_factory=list)
    """The per-run scalars mapped (mean over seeds per cell and SAE)."""

    @property
    def failed(self) -> list[CellRecord]:
        return [cell for cell in self.cells if cell.status != "done"]

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "seeds": self.seeds,
            "claims": self.claims,
            "metrics": self.metrics,
            "set": self.set,
            "axes": self.axes,
            "cells": [cell.to_json() for cell in self.cells],
        }

    @classmethod
    def from_json(cls, data: dict) -> "SweepRecord":
        return cls(
            base=data["base"],
            seeds=data["seeds"],
            claims=data.get("claims", []),
            set=data.get("set", {}),
            axes=data["axes"],
            cells=[CellRecord.from_json(c) for c in data["cells"]],
            metrics=data.get("metrics", []),
        )
