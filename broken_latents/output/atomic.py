"""Putting a finished output folder in place at once: written beside DIR as a hidden partial folder,
it replaces DIR only when complete, so nothing that looks finished is ever half-written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_into_place(partial: Path, out: Path) -> None:
    """Move the complete folder `partial` to `out`, replacing an earlier `out` (renames are atomic
    on one filesystem; the earlier folder is removed only after the new one is in place)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(partial, out)
