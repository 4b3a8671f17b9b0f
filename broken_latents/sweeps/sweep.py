"""`broken-latents sweep SPEC.toml`: a grid of ordinary runs, resumable, then one map per claim.

DIR/cells/NAME/   one run directory per cell (written atomically by run_experiment)
DIR/sweep.json    {"base", "seeds", "axes", "cells": [{"values", "status", "error", "claims", "path"}]},
                  rewritten atomically after every cell
DIR/maps/*.png    per claim and pair of axes, the share of seeds where the claim held
DIR/report.html   the maps and the cells, one self-contained page

A cell is finished when its directory is complete (metrics.json) and holds the config the spec
now gives it; a rerun skips finished cells and trains the rest, so a sweep killed at any point
and rerun ends where an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text

from ..config.schema import ConfigError
from ..analysis.metrics import read_metrics
from ..files.atomic import file_in_place
from ..output.terminal import make_console
from .executors import CellTask, claim_counts, metric_means, run_local, run_ray
from .maps import nothing_to_map, write_maps, write_report
from .record import CellRecord, CellResult, SweepRecord
from .spec import Cell, SweepSpec, cell_toml, grid, label, load_spec


@dataclass
class SweepOutcome:
    directory: Path
    record: SweepRecord
    failed: list[CellRecord] = field(default_factory=list)
    """Cells that did not train: failed, or invalid (`invalid`: their config refused)."""
    trained: int = 0
    """Cells trained by this call (the others were finished before)."""


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def run_sweep(
    spec_path: Path,
    out: Path | None = None,
    workers: int | None = None,
    ray: str | None = None,
    progress: bool = True,
    cell_function=None,
) -> SweepOutcome:
    """Validate everything, then train every unfinished cell, recording each as it ends."""
    from ..training.preflight import check_writable

    console = make_console(stderr=True)
    if workers is not None and workers < 1:
        raise ConfigError("--workers", f"must be >= 1, got {workers}")
    if ray is not None and not ray.strip():
        raise ConfigError(
            "--ray", "give 'auto' or a cluster address such as ray://host:10001 or host:6379"
        )
    spec = load_spec(spec_path)
    cells = grid(spec)
    if all(cell.error for cell in cells):
        raise ConfigError(*_first_error(spec, cells))
    out = Path(out) if out is not None else Path("sweeps") / Path(spec_path).stem
    _check_sweep_dir(out)
    check_writable(out / "cells")  # creates DIR and writes a probe file there
    workers = workers or default_workers()
    if ray is not None:
        _check_ray()

    (out / "cells").mkdir(parents=True, exist_ok=True)
    with _Lock(out):
        _remove_partials(out / "cells")
        records = {
            cell.name: _initial_record(cell, out, spec.claims, spec.metrics) for cell in cells
        }
        tasks = [_task(spec, cell, out) for cell in cells if records[cell.name].status == "pending"]
        write_json(out / "sweep.json", sweep_record(spec, cells, records).to_json())
        skipped = sum(r.status == "done" for r in records.values())
        invalid = sum(cell.error is not None for cell in cells)
        if progress:
            console.print(
                f"sweep {spec.base}: {len(cells)} cells x {spec.seeds} seeds; {skipped} finished before, "
                f"{invalid} invalid, {len(tasks)} to train "
                f"({'Ray ' + ray if ray else f'{min(workers, max(len(tasks), 1))} local workers'})"
            )
            if not (spec.axes and (spec.claims or spec.metrics)):
                console.print(nothing_to_map(sweep_record(spec, cells, records)))
        done_count = [0]

        def on_result(task: CellTask, result: CellResult) -> None:
            records[task.name] = _record(cells_by_name[task.name], result)
            write_json(out / "sweep.json", sweep_record(spec, cells, records).to_json())
            done_count[0] += 1
            if progress:
                console.print(
                    _line(done_count[0], len(tasks), cells_by_name[task.name], records[task.name])
                )

        cells_by_name = {cell.name: cell for cell in cells}
        kwargs = {"cell_function": cell_function} if cell_function else {}
        if tasks:
            if ray is not None:
                run_ray(tasks, ray, workers if ray == "auto" else None, on_result, **kwargs)
            else:
                run_local(tasks, workers, on_result, **kwargs)
        record = sweep_record(spec, cells, records)
        write_json(out / "sweep.json", record.to_json())
        maps = write_maps(record, out / "maps")
        write_report(record, maps, out)
    failed = record.failed
    if progress:
        console.print(_summary(record, failed, out, maps))
    return SweepOutcome(out, record, failed, len(tasks))


def _check_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--ray", "Ray is not installed here; pip install 'ray>=2.9' (or run without --ray)"
        ) from None


def _first_error(spec: SweepSpec, cells: list[Cell]) -> tuple[str, str]:
    """No cell is valid: name the axis whose value is wrong on its own, else the first cell."""
    from ..config.overrides import apply_values
    from ..pipeline.resolve import check_trainable

    for key, values in spec.axes.items():
        for i, value in enumerate(values):
            try:
                check_trainable(apply_values(spec.config, [(key, value)]))
            except ConfigError as err:
                return f"axes.{key}", f"value {i} ({value!r}): {err}"
    cell = cells[0]
    return "axes", f"no cell of the grid is valid; {label(cell.values)}: {cell.error}"


def _check_sweep_dir(out: Path) -> None:
    """A sweep writes into DIR: refuse a DIR that holds something other than an earlier sweep."""
    if (
        out.exists()
        and out.is_dir()
        and any(out.iterdir())
        and not (out / "sweep.json").exists()
        and not (out / "cells").is_dir()
    ):
        raise ConfigError(
            "--out",
            f"{out} exists and is not a sweep directory (no sweep.json); choose a new path "
            "or an earlier sweep's directory to resume",
        )


class _Lock:
    """DIR/.lock holds the pid of the sweep writing there: two sweeps in one DIR would trample each
    other; a lock left by a killed sweep (its pid gone) is taken over."""

    def __init__(self, out: Path):
        self.path = out / ".lock"

    def __enter__(self):
        try:
            pid = int(self.path.read_text())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid is not None and pid != os.getpid() and _alive(pid):
            raise ConfigError(
                "--out",
                f"another sweep (pid {pid}) is writing to {self.path.parent}; wait for it or "
                "choose another --out",
            )
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_partials(cells_dir: Path) -> None:
    """Half-written cells of a sweep that was killed (run_experiment's hidden partial folders)."""
    for path in cells_dir.iterdir():
        if path.name.startswith(".") and (".partial-" in path.name or ".old-" in path.name):
            shutil.rmtree(path, ignore_errors=True)


def _initial_record(cell: Cell, out: Path, wanted: list[str], mapped: list[str]) -> CellRecord:
    if cell.error is not None:
        return _record(cell, CellResult("failed", error=cell.error, invalid=True))
    finished = _finished(out / "cells" / cell.name, cell_toml(cell.config), wanted, mapped)
    return _record(cell, finished or CellResult("pending"))


def _finished(
    directory: Path, config_toml: str, wanted: list[str], mapped: list[str]
) -> CellResult | None:
    """A complete run directory holding this very config: its result, read back."""
    try:
        if (directory / "config.toml").read_text() != config_toml:
            return None
        metrics = read_metrics(directory / "metrics.json", "metrics.json")
    except (OSError, ConfigError):
        return None
    return CellResult(
        "done",
        claims=claim_counts(metrics, wanted),
        metrics=metric_means(metrics, mapped),
        wall_seconds=metrics.wall_seconds,
    )


def _task(spec: SweepSpec, cell: Cell, out: Path) -> CellTask:
    return CellTask(
        name=cell.name,
        config_toml=cell_toml(cell.config),
        experiment=spec.experiment,
        claims=list(spec.claims),
        clean_cos=spec.clean_cos,
        out=str((out / "cells" / cell.name).resolve()),
        metrics=list(spec.metrics),
    )


def _record(cell: Cell, result: CellResult) -> CellRecord:
    return CellRecord(
        values=cell.values,
        status=result.status,
        error=result.error,
        claims=result.claims,
        path=f"cells/{cell.name}",
        wall_seconds=result.wall_seconds,
        metrics=result.metrics,
        invalid=result.invalid,
    )


def sweep_record(spec: SweepSpec, cells: list[Cell], records: dict[str, CellRecord]) -> SweepRecord:
    return SweepRecord(
        base=spec.base,
        seeds=spec.seeds,
        claims=spec.claims,
        set=spec.settings,
        axes=spec.axes,
        cells=[records[cell.name] for cell in cells],
        metrics=spec.metrics,
    )


def write_json(path: Path, data: dict) -> None:
    """Write-then-rename: a reader (or a kill) never sees half a file."""
    file_in_place(path, lambda partial: partial.write_text(json.dumps(data, indent=1)))


def _line(i: int, n: int, cell: Cell, record: CellRecord) -> Text:
    head = f"[{i}/{n}] {label(cell.values)}:"
    if record.status != "done":
        return Text.assemble(f"{head} ", ("failed", "red"), f": {record.error}")
    claims = ", ".join(f"{cid} {c.held}/{c.seeds}" for cid, c in record.claims.items())
    return Text(
        f"{head} done in {record.wall_seconds or 0:.1f} s" + (f"; {claims}" if claims else "")
    )


def _summary(
    record: SweepRecord, failed: list[CellRecord], out: Path, maps: dict[str, list[Path]]
) -> Text:
    """What was done, what was drawn (or that nothing could be), and the cells that did not train:
    invalid ones (their config is refused: the spec must change) apart from failed ones (a rerun retries)."""
    n = len(record.cells)
    drawn = sum(len(paths) for paths in maps.values())
    maps_at = f" in {out / 'maps'}" if drawn else ""
    text = Text(
        f"{n - len(failed)}/{n} cells done; {drawn} map(s){maps_at}; report: {out / 'report.html'}; "
        f"every cell in {out / 'sweep.json'}"
    )
    if not drawn:
        text.append(f"\n{nothing_to_map(record)}")
    invalid = [c for c in failed if c.invalid]
    crashed = [c for c in failed if not c.invalid]
    for cells, word, advice in (
        (invalid, "invalid", "their config is refused; fix those axis values in the spec"),
        (crashed, "failed", "rerun the same command to retry them"),
    ):
        if not cells:
            continue
        text.append(f"\n{len(cells)} cell(s) ")
        text.append(word, "bold red")
        text.append(f" ({advice}):")
        for c in cells[:10]:
            text.append(f"\n  {label(c.values)}: {c.error}")
        if len(cells) > 10:
            text.append(f"\n  ... and {len(cells) - 10} more (see sweep.json)")
    return text
