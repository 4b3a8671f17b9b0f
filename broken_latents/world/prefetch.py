"""Drawing batches ahead, in a thread beside the trainer: the compiled samplers and BLAS release
the GIL, so the next batch is ready when the step ends. Both streams (dense and sparse) use it."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class Prefetcher:
    """Calls `draw()` over and over in a daemon thread, holding at most `depth` results; `take()`
    hands them out in order and re-raises, in the trainer, whatever stopped the thread. `pace()`
    makes each draw wait for a turn the trainer gives (`give_turn`)."""

    def __init__(self, draw: Callable[[], Any], depth: int):
        self._draw = draw
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._turns: threading.Semaphore | None = None
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def pace(self) -> None:
        """From now on each draw waits for a turn (`give_turn`), `depth` turns given at once. Why:
        on two cores the sampling thread shares the second one with the trainer's helper
        (engine/chunks.py), and the scheduler lets a running thread finish its slice (milliseconds,
        EEVDF) before a woken one runs: a draw that overlaps the encoder's product keeps the helper
        out of it. A trainer that gives the turn once that product is done (one turn a step) has the
        batch drawn while it works alone."""
        self._turns = threading.Semaphore(self._queue.maxsize)

    def give_turn(self) -> None:
        """Let a paced thread draw once more (turns add up)."""
        if self._turns is not None:
            self._turns.release()

    def _wait_turn(self) -> bool:
        """Wait for a turn if paced; False if stopped meanwhile."""
        while self._turns is not None and not self._turns.acquire(timeout=0.1):
            if self._stop.is_set():
                return False
        return True

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._wait_turn():
                    return
                item = self._draw()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # surfaced to the trainer by take()
            self._error = err

    def take(self) -> Any:
        while True:
            try:
                return self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._error is not None:
                    raise self._error
                if not self._thread.is_alive():
                    raise RuntimeError("the sampling thread stopped")

    def close(self) -> None:
        """Stop the thread and wait for it: a thread left inside compiled code while the interpreter
        shuts down (say after SIGTERM) can crash the process."""
        self._stop.set()
        while True:  # make room, so that a thread waiting to put an item sees the stop at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)
