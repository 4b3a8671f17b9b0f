"""Where cells train: a local process pool (the default) or Ray tasks on a local or existing cluster.

Both call `run_cell`, which trains one cell's SAEs in lockstep (as `broken-latents run` does) into an
ordinary, atomically written run directory, so the same spec gives the same per-cell metrics on
either. A worker trains with one math thread: the cores go to cells, not to threads of one cell.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import tarfile
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from ..analysis.metrics import Metrics
from .record import CellResult, ClaimCount

ATTEMPTS = 3
"""Tries of a cell whose worker process dies (killed, out of memory) before it is recorded failed."""

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


@dataclass
class CellTask:
    name: str
    config_toml: str
    """The cell's resolved config, as its run directory's config.toml will hold it."""
    experiment: str | None
    """Registered experiment whose claims are evaluated (every claim, as `run` does)."""
    claims: list[str]
    """The claims the sweep maps (summarised in the result)."""
    clean_cos: float
    out: str
    """The cell's run directory."""
    metrics: list[str] = field(default_factory=list)
    """The per-run scalars the sweep maps (their means over seeds are summarised in the result)."""


def run_cell(task: CellTask) -> CellResult:
    """Train one cell into task.out. Never raises: a failure is a result with status "failed" and its error."""
    import sys

    from ..config.schema import ConfigError, ExperimentConfig
    from ..config.toml_io import from_dict
    from ..experiments import EXPERIMENTS
    from ..pipeline.resolve import Target
    from ..pipeline.run import run_experiment
    from ..training.loop import TrainingDiverged

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    started = time.perf_counter()
    try:
        config = from_dict(ExperimentConfig, tomllib.loads(task.config_toml))
        claims = EXPERIMENTS[task.experiment].claims if task.experiment else []
        target = Target(config, claims, task.clean_cos, task.experiment)
        outcome = run_experiment(target, Path(task.out), progress=False)
    except ConfigError as err:  # the cell's config is refused: a rerun will not help
        return CellResult(
            "failed",
            error=str(err),
            invalid=True,
            wall_seconds=round(time.perf_counter() - started, 3),
        )
    except TrainingDiverged as err:
        return CellResult(
            "failed", error=str(err), wall_seconds=round(time.perf_counter() - started, 3)
        )
    except Exception as err:  # noqa: BLE001 (one cell's bug must not stop the sweep)
        return CellResult(
            "failed",
            error=f"{type(err).__name__}: {err}",
            wall_seconds=round(time.perf_counter() - started, 3),
        )
    return CellResult(
        "done",
        claims=claim_counts(outcome.metrics, task.claims),
        metrics=metric_means(outcome.metrics, task.metrics),
        wall_seconds=outcome.metrics.wall_seconds,
    )


def claim_counts(metrics: Metrics, wanted: list[str]) -> dict[str, ClaimCount]:
    """The mapped claims' seeds held, seeds run and overall verdict, by claim id."""
    by_id = {c.id: c for c in metrics.claims or []}
    return {
        cid: ClaimCount(
            held=by_id[cid].seeds_held, seeds=by_id[cid].seeds_run, holds=by_id[cid].holds
        )
        for cid in wanted
        if cid in by_id
    }


def metric_means(metrics: Metrics, wanted: list[str]) -> dict[str, dict[str, float]]:
    """{SAE label: {metric: mean over the seeds that have it}} for the mapped per-run scalars."""
    from ..analysis.metrics import run_scalar

    means: dict[str, dict[str, float]] = {}
    for label in dict.fromkeys(run.label for run in metrics.runs):
        for name in wanted:
            values = [
                v
                for run in metrics.runs
                if run.label == label and (v := run_scalar(run, name)) is not None
            ]
            if values:
                means.setdefault(label, {})[name] = sum(values) / len(values)
    return means


# -- local process pool -------------------------------------------------------------------------


def _init_worker() -> None:
    """One math thread; die with the sweep (a SIGKILLed sweep leaves no worker training on); Ctrl-C
    is the parent's to handle."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover (not Linux)
        pass
    import torch

    torch.set_num_threads(1)


def run_local(
    tasks: list[CellTask],
    workers: int,
    on_result: Callable[[CellTask, CellResult], None],
    cell_function: Callable[[CellTask], CellResult] = run_cell,
) -> None:
    """Train `tasks` on a pool of `workers` processes, at most `workers` cells submitted at a time, so
    a worker that dies takes only the cells in flight with it; those are retried in a fresh pool."""
    pending = list(tasks)
    context = _context()
    attempts = {task.name: 0 for task in tasks}
    while pending:
        pool = ProcessPoolExecutor(
            max_workers=max(1, min(workers, len(pending))),
            mp_context=context,
            initializer=_init_worker,
        )
        in_flight = {}
        try:
            while pending or in_flight:
                while pending and len(in_flight) < workers:
                    future = pool.submit(cell_function, pending[0])
                    task = pending.pop(0)
                    attempts[task.name] += 1
                    in_flight[future] = task
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    result = (
                        future.result()
                    )  # BrokenProcessPool if a worker died: its task stays in flight
                    on_result(in_flight.pop(future), result)
        except BrokenProcessPool:
            for task in in_flight.values():
                if attempts[task.name] >= ATTEMPTS:
                    on_result(
                        task,
                        CellResult(
                            "failed",
                            error=f"the worker process died {ATTEMPTS} times "
                            "(killed, or out of memory)",
                        ),
                    )
                else:
                    pending.insert(0, task)
        finally:
            _stop(pool)


def _context():
    """Workers fork from a server process that has imported torch, numba and the package once: a
    fresh process per pool (or after a worker died) starts in milliseconds instead of seconds, and
    none inherits the parent's threads, as a plain fork would."""
    try:
        context = get_context("forkserver")
    except ValueError:  # pragma: no cover (no forkserver on this platform)
        return get_context("spawn")
    context.set_forkserver_preload(
        ["broken_latents.sweeps.executors", "broken_latents.pipeline.run"]
    )
    return context


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down; on an interrupt its workers are still training, so end them."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)


# -- Ray ----------------------------------------------------------------------------------------


def run_cell_archived(
    task: CellTask, cell_function: Callable[[CellTask], CellResult] = run_cell
) -> CellResult:
    """`run_cell` into a scratch folder of the node it runs on; the run directory comes back as a
    tar archive, so a cluster needs no file system shared with the driver."""
    with tempfile.TemporaryDirectory(prefix="broken-latents-cell-") as scratch:
        local = Path(scratch) / task.name
        result = cell_function(CellTask(**{**task.__dict__, "out": str(local)}))
        if result.status == "done":
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
                archive.add(local, arcname=task.name)
            result.archive = buffer.getvalue()
        return result


def unpack(archive: bytes, out: Path) -> None:
    """Put an archived run directory at `out`, atomically (a partial folder, then one rename)."""
    partial = out.parent / f".{out.name}.partial-ray-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            members = tar.getmembers()
            if any(
                m.name.startswith("/")
                or ".." in Path(m.name).parts
                or not (m.isfile() or m.isdir())
                for m in members
            ):
                raise ValueError("unsafe path in a cell archive")
            tar.extractall(partial, members=members)
        (extracted,) = list(partial.iterdir())
        if out.exists():
            shutil.rmtree(out)
        os.rename(extracted, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def connect_ray(address: str, workers: int | None) -> bool:
    """Join the cluster at `address` ('auto': an existing one if there is one, else start one here).
    Returns whether this call started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    package = str(Path(__file__).resolve().parents[1])
    options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if address == "auto":
        try:
            ray.init(address="auto", runtime_env={"py_modules": [package]}, **options)
        except (ConnectionError, RuntimeError, ValueError):
            ray.init(
                num_cpus=workers, **options
            )  # no cluster running: a local one, on this machine's cores
    else:
        ray.init(address=address, runtime_env={"py_modules": [package]}, **options)
    return True


def run_ray(
    tasks: list[CellTask],
    address: str,
    workers: int | None,
    on_result: Callable[[CellTask, CellResult], None],
    cell_function: Callable[[CellTask], CellResult] = run_cell,
) -> None:
    """Each cell a Ray task of one CPU, retried when its worker dies (max_retries)."""
    import ray

    started_here = connect_ray(address, workers)
    try:
        remote = ray.remote(num_cpus=1, max_retries=ATTEMPTS)(run_cell_archived)
        refs = {remote.remote(task, cell_function): task for task in tasks}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                task = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:  # retries used up, or the cluster went away
                    result = CellResult("failed", error=f"Ray: {str(err).splitlines()[0]}")
                if result.archive is not None:
                    unpack(result.archive, Path(task.out))
                    result.archive = None
                on_result(task, result)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
