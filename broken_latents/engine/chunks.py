"""Splitting a step's large dense parts (the encoder's product, Adam's update) into chunks that the
training thread and one helper thread take in turn: on two cores the sampling thread leaves the
second one idle part of each step (it draws a batch in less time than a step takes), and the
helper fills that time.

Why chunks, taken one at a time, rather than two halves or torch's own threads: the helper shares
its core with the sampling thread (and with whatever else runs), so it is often late or descheduled;
the training thread never waits for it except to finish the one chunk it holds. torch's threads
split a product in fixed shares, and the whole product waits for the slowest share
(`training.loop.single_torch_thread`).
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from typing import Callable


class ChunkPool:
    """Runs the chunks 0..n-1 of a job (`run`) on the calling thread and on one helper thread beside
    it, each taking the next chunk when it is free. The chunk functions must release the GIL
    (torch's products, numba's nogil kernels) for the two to overlap."""

    def __init__(self):
        self._job: _Job | None = None
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._help, daemon=True)
        self._thread.start()

    def run(self, chunk: Callable[[int], None], n: int) -> None:
        """chunk(0), ..., chunk(n - 1), in any order and on either thread; returns when all are done,
        raising what any raised."""
        job = _Job(chunk, n)
        with self._wake:
            self._job = job
            self._wake.notify()
        job.work()
        job.finished.wait()
        if job.error is not None:
            raise job.error

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _help(self) -> None:
        seen = None
        while True:
            with self._wake:
                while not self._stop and (self._job is None or self._job is seen):
                    self._wake.wait()
                if self._stop:
                    return
                seen = self._job
            seen.work()


class _Job:
    def __init__(self, chunk: Callable[[int], None], n: int):
        self.chunk, self.n = chunk, n
        self.next = itertools.count()  # next() on it is atomic under the GIL
        self.done = 0
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        if n == 0:
            self.finished.set()

    def work(self) -> None:
        """Take chunks until none is left."""
        while (i := next(self.next)) < self.n:
            try:
                self.chunk(i)
            except BaseException as err:  # re-raised by the thread that ran the job
                self.error = err
            with self.lock:
                self.done += 1
                if self.done == self.n:
                    self.finished.set()


class HelperProbe:
    """Whether sharing with the helper pays, measured in the run itself (it does not on a machine
    whose cores other work keeps busy: the helper is descheduled holding a chunk and the training
    thread waits). Every `EVERY` steps, `PROBE` steps without the helper then `PROBE` with it, each
    timed from the end of the step before, so the wait for the batch counts (a helper that slows the
    sampling thread shows there); the faster way (medians) holds until the next probe."""

    EVERY = 64
    PROBE = 4

    def __init__(self):
        self.steps = 0
        self.use = True
        self._last: float | None = None
        self._times: tuple[list[float], list[float]] = ([], [])  # without, with the helper

    def use_helper(self) -> bool:
        """Whether the coming step shares with the helper."""
        phase = self.steps % self.EVERY
        return phase >= self.PROBE if phase < 2 * self.PROBE else self.use

    def step_done(self) -> None:
        now = time.perf_counter()
        phase = self.steps % self.EVERY
        if phase < 2 * self.PROBE and self._last is not None:
            self._times[phase >= self.PROBE].append(now - self._last)
        if phase == 2 * self.PROBE - 1:
            without, shared = (statistics.median(t) if t else math.inf for t in self._times)
            self.use = shared < without
            for t in self._times:
                t.clear()
        self._last = now
        self.steps += 1
