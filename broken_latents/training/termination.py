"""Stopping on SIGTERM or Ctrl-C without tearing compiled code apart.

A signal handler that raises lands wherever the main thread happens to be. Inside numba's
compiler (the first call of a kernel compiles it, or loads it from the cache) the exception
leaves the library half-built: the process then either died with a traceback or ignored the
signal and trained to the end (both seen). So the CLI's handler stops at once, except inside
`deferred()`, the training loop, which stops at its next `check()` between steps instead.
Library use without the CLI installs no handler and nothing here ever fires.
"""

from __future__ import annotations

import contextlib
import signal
import sys


class _Termination:
    def __init__(self) -> None:
        self.signal: int | None = None
        self.deferring = 0

    def request(self, signum: int, frame=None) -> None:
        """The signal handler."""
        self.signal = signum
        if not self.deferring:
            self.stop()

    def check(self) -> None:
        """Stop here if a signal came in: call only where stopping is safe."""
        if self.signal is not None:
            self.stop()

    @contextlib.contextmanager
    def deferred(self):
        """Signals in this block stop at the next `check()`, or when the block ends."""
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
        self.check()

    def install(self) -> None:
        """Route SIGTERM and Ctrl-C through here (what the CLI does first)."""
        signal.signal(signal.SIGTERM, self.request)
        signal.signal(signal.SIGINT, self.request)

    def stop(self) -> None:
        signum, self.signal = self.signal, None
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(128 + signum)


termination = _Termination()
