"""The training data: one independent stream of feature firings per seed, drawn ahead in a thread."""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from .world import World

CHUNK_BATCHES = 4
"""Batches drawn per seed at a time: fewer calls than one at a time, small enough to stay in cache
(16 at a time ran 3x slower per sample), and the same stream for any run length."""


class DataStream:
    """Seed r's samples come from its own generator (SFC64 seeded by (offset, r)), so seed r
    trains the same SAEs whichever other seeds run beside it. With `prefetch`, a thread draws
    the next chunk while the trainer works: numpy's generators and ufuncs release the GIL, so
    sampling runs on the second core."""

    def __init__(self, world: World, seeds: list[int], batch: int, device: str | torch.device | None = "cpu",
                 offset: int = 0, chunk: int = CHUNK_BATCHES, prefetch: bool = False):
        """device None: batches are numpy arrays (the CPU fast path); else torch tensors there."""
        self.world, self.batch, self.chunk, self.device = world, batch, chunk, device
        self.rngs = [np.random.Generator(np.random.SFC64([offset, seed])) for seed in seeds]
        self.buffer_CRNB = None
        self.position = chunk
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        if prefetch:
            self._queue = queue.Queue(maxsize=2)
            self._error: BaseException | None = None
            self._thread = threading.Thread(target=self._produce, daemon=True)
            self._thread.start()

    def next(self):
        """Feature magnitudes f_RNB of the next batch of every seed (contiguous)."""
        if self.position == self.chunk:
            self.buffer_CRNB = self._draw() if self._queue is None else self._take()
            self.position = 0
        self.position += 1
        return self.buffer_CRNB[self.position - 1]

    def close(self) -> None:
        self._stop.set()

    def __enter__(self) -> "DataStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _draw(self):
        """The next chunk, [chunk, seeds, N, B]: batch-major so each step's slice is contiguous.
        Each seed's samples are written straight into place (one pass, no stacking copies)."""
        n = self.world.n_features
        out = np.empty((self.chunk, len(self.rngs), n, self.batch), dtype=np.float32)
        for r, rng in enumerate(self.rngs):
            f_NB = self.world.sample(rng, self.chunk * self.batch)
            out[:, r] = f_NB.reshape(n, self.chunk, self.batch).transpose(1, 0, 2)
        return out if self.device is None else torch.from_numpy(out).to(self.device)

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._draw()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # surfaced to the trainer by _take
            self._error = err

    def _take(self):
        while True:
            try:
                return self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._error is not None:
                    raise self._error
                if not self._thread.is_alive():
                    raise RuntimeError("the sampling thread stopped")
