"""Stored activations as a world: a [N, D] file read in place, streamed in shuffled chunks.

`.npy` files are memory-mapped; `.safetensors` files are read slice by slice (`activations_key`
names the tensor). float32 or float16; batches are float32. The last `held_out` share of the rows
(a contiguous block, so rows of one sequence stay on one side) is kept for evaluation and never
trained on. Every check that can fail on a user's file raises `ConfigError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..config.schema import ConfigError

CHUNK_ROWS = 65_536
"""Rows read at a time: one contiguous read, shuffled in memory (a random row order over the whole
file would read a memory-mapped file row by row)."""
CENTRE_ROWS = 65_536
"""Training rows `StoredActivations.mean_D` averages: where training starts every SAE's b_dec."""
SCAN_ROWS = 1_000_000
"""Rows checked for NaN/inf per read when the file is opened."""
DTYPES = (np.float32, np.float16)


@dataclass
class ActivationFile:
    path: Path
    rows: object
    """The [N, D] rows, read lazily: a memory-mapped array, or a safetensors slice."""
    n: int
    dim: int
    dtype: str

    @classmethod
    def open(
        cls,
        path: str | Path,
        key: str | None = None,
        field: str = "world.activations",
        key_field: str = "world.activations_key",
        scan: bool = True,
    ) -> "ActivationFile":
        """Check the file and read nothing but its header, then (`scan`) every row for NaN/inf.
        `field`, `key_field`: the names errors give (a TOML field, or a command's flags);
        scan=False for a reader that checks each chunk as it streams (inspect: one pass, not two)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(field, f"no such file: {path}")
        if path.suffix == ".npy":
            try:
                rows = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as err:
                raise ConfigError(field, f"{path} is not a readable .npy file: {err}") from None
            shape, dtype = rows.shape, rows.dtype
        elif path.suffix == ".safetensors":
            rows, shape, dtype = _safetensors_slice(path, key, field, key_field)
        else:
            raise ConfigError(
                field,
                f"{path}: expected a .npy or .safetensors file, got {path.suffix or 'no suffix'!r}",
            )
        if len(shape) != 2:
            raise ConfigError(
                field, f"{path}: expected a 2-D array [N, D], got shape {list(shape)}"
            )
        if dtype not in DTYPES:
            raise ConfigError(field, f"{path}: expected float32 or float16, got {dtype}")
        n, dim = int(shape[0]), int(shape[1])
        if n < 2 or dim < 1:
            raise ConfigError(
                field, f"{path}: needs at least 2 rows and 1 column, got shape {[n, dim]}"
            )
        source = cls(path, rows, n, dim, str(dtype))
        if scan:
            source._check_finite(field)
        return source

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop as a float32 array in memory."""
        return np.array(
            self.rows[start:stop], dtype=np.float32
        )  # a copy: memory maps are read-only

    def _check_finite(self, field: str) -> None:
        for start in range(0, self.n, SCAN_ROWS):
            block = self.read(start, min(start + SCAN_ROWS, self.n))
            bad = ~np.isfinite(block)
            if bad.any():
                row = start + int(np.flatnonzero(bad.any(axis=1))[0])
                raise ConfigError(
                    field, f"{self.path}: row {row} holds NaN or inf; clean the file first"
                )

    def split(self, held_out: float) -> tuple[range, range]:
        """(training rows, held-out rows): the held-out block is the last `held_out` share."""
        test = max(1, int(round(self.n * held_out))) if held_out > 0 else 0
        return range(0, self.n - test), range(self.n - test, self.n)


def _safetensors_slice(path: Path, key: str | None, field: str, key_field: str):
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="np")
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise ConfigError(field, f"{path} is not a readable .safetensors file: {err}") from None
    keys = list(handle.keys())
    if key is None:
        if len(keys) != 1:
            raise ConfigError(
                key_field,
                f"{path} holds {len(keys)} tensors ({', '.join(keys[:8])}); "
                f"name one with {key_field.rsplit('.', 1)[-1]}",
            )
        key = keys[0]
    if key not in keys:
        raise ConfigError(
            key_field,
            f"{path} has no tensor {key!r}; it holds: {', '.join(keys[:8])}",
        )
    part = handle.get_slice(key)
    dtype = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16)}.get(
        part.get_dtype(), part.get_dtype()
    )
    return part, tuple(part.get_shape()), dtype


def read_labels(path: str | Path, rows: int, field: str = "world.labels") -> np.ndarray:
    """Concept indicators [N, C] (bool, or numbers: nonzero = active), one row per activation row."""
    labels = _read_npy(path, field)
    if labels.ndim != 2 or labels.shape[0] != rows:
        raise ConfigError(
            field,
            f"{path}: expected [N, C] with N = {rows} (the activations' rows), "
            f"got shape {list(labels.shape)}",
        )
    if labels.dtype != np.bool_ and not np.isfinite(np.asarray(labels, dtype=np.float64)).all():
        raise ConfigError(field, f"{path}: holds NaN or inf")
    return np.asarray(labels) != 0


def read_directions(path: str | Path, dim: int, field: str = "world.directions") -> np.ndarray:
    """Per-concept directions [C, D], made unit length."""
    directions = np.asarray(_read_npy(path, field), dtype=np.float64)
    if directions.ndim != 2 or directions.shape[1] != dim:
        raise ConfigError(
            field,
            f"{path}: expected [C, D] with D = {dim} (the activations' width), "
            f"got shape {list(directions.shape)}",
        )
    norms = np.linalg.norm(directions, axis=1)
    if not np.isfinite(directions).all() or (norms == 0).any():
        raise ConfigError(field, f"{path}: every direction must be finite and nonzero")
    return (directions / norms[:, None]).astype(np.float32)


def _read_npy(path: str | Path, field: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"no such file: {path}")
    if path.suffix != ".npy":
        raise ConfigError(field, f"{path}: expected a .npy file")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise ConfigError(field, f"{path} is not a readable .npy file: {err}") from None


class ShuffledBatches:
    """Batches of training rows, forever: chunks of CHUNK_ROWS in a shuffled order, each read in one
    piece and shuffled in memory, epoch after epoch (a new order each). Seeded by `seed`."""

    def __init__(
        self,
        source: ActivationFile,
        rows: range,
        batch: int,
        seed: int,
        chunk_rows: int = CHUNK_ROWS,
        offset: int = 0,
    ):
        """offset: another stream of the same seed (the peak-model refits' inputs); 0 is training's."""
        self.source, self.batch = source, batch
        self.rng = np.random.default_rng([seed, 11] if offset == 0 else [seed, 11, offset])
        chunk_rows = max(chunk_rows, batch)
        self.chunks = [
            (a, min(a + chunk_rows, rows.stop)) for a in range(rows.start, rows.stop, chunk_rows)
        ]
        self.order: list[int] = []
        self.block = np.empty((0, source.dim), dtype=np.float32)
        self.position = 0

    def next(self) -> np.ndarray:
        """The next [batch, D] float32 batch (a view of the shuffled block, when it lies in one)."""
        parts, need = [], self.batch
        while need:
            if self.position == len(self.block):
                if not self.order:
                    self.order = self.rng.permutation(len(self.chunks)).tolist()
                block = self.source.read(*self.chunks[self.order.pop()])
                self.block, self.position = block[self.rng.permutation(len(block))], 0
            take = min(need, len(self.block) - self.position)
            parts.append(self.block[self.position : self.position + take])
            self.position, need = self.position + take, need - take
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class StoredActivations:
    """Stored rows as the world the training loop (training/loop.py) and its engines train on. It plays a
    sparse world's part: the engines train on the inputs x themselves, read as the magnitudes of the D
    input axes (`Engine.as_features`), and `DataStream` opens an `ActivationStream` on it. There are no
    features: nothing here samples, and the truth (labels, directions) is the measurement's business."""

    sparse = True

    def __init__(self, source: ActivationFile, held_out: float):
        self.source = source
        self.train_rows, self.test_rows = source.split(held_out)

    @property
    def dim(self) -> int:
        return self.source.dim

    @property
    def directions_ND(self):
        """The engines' feature space on stored rows: the D input axes (an identity, as for sparse worlds)."""
        import torch

        return torch.eye(self.dim)

    @cached_property
    def mean_D(self) -> np.ndarray:
        """The mean row [D] of the first CENTRE_ROWS training rows (where training starts b_dec)."""
        rows = self.train_rows
        return self.source.read(rows.start, min(rows.start + CENTRE_ROWS, rows.stop)).mean(0)

    def inputs(self, x_RBD):
        """x_RBD of a batch: an `ActivationStream` batch is its inputs."""
        return x_RBD

    def to(self, device) -> "StoredActivations":
        return self  # the rows stay in the file; the stream puts each batch on the device


class ActivationStream:
    """`DataStream` for stored activations: every seed gets the same shuffled batch of training rows (one
    `ShuffledBatches` seeded by the first seed; seeds differ in their SAEs' initialisation), as x_RBD on
    `device`, read ahead in a thread with `prefetch` (the copy out of the file releases the GIL)."""

    def __init__(
        self,
        world: StoredActivations,
        seeds: list[int],
        batch: int,
        device="cpu",
        offset: int = 0,
        chunk: int = 1,
        prefetch: bool = False,
    ):
        from .prefetch import Prefetcher

        self.batches = ShuffledBatches(
            world.source, world.train_rows, batch, seeds[0], offset=offset
        )
        self.seeds, self.device = len(seeds), device or "cpu"
        self.prefetcher = Prefetcher(self.batches.next, 2) if prefetch else None

    def next(self):
        import torch

        x_BD = self.batches.next() if self.prefetcher is None else self.prefetcher.take()
        return torch.from_numpy(x_BD).to(self.device).expand(self.seeds, -1, -1)

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()

    def __enter__(self) -> "ActivationStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
