"""Sweeps: grids of ordinary runs over any config key, on a local process pool or on Ray, resumable,
with one map per claim (spec.py: the spec and its grid; executors.py: where cells train;
sweep.py: the sweep directory; record.py: sweep.json typed; maps.py: maps and report)."""

from .record import CellRecord, ClaimCount, SweepRecord
from .spec import Cell, SweepSpec, grid, load_spec, parse_spec
from .sweep import SweepOutcome, run_sweep

__all__ = [
    "Cell",
    "CellRecord",
    "ClaimCount",
    "SweepOutcome",
    "SweepRecord",
    "SweepSpec",
    "grid",
    "load_spec",
    "parse_spec",
    "run_sweep",
]
