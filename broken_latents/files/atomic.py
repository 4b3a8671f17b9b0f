"""Putting a finished output folder in place at once: written beside DIR as a hidden partial folder,
it replaces DIR only when complete, so nothing that looks finished is ever half-written."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def folder_in_place(out: Path) -> Iterator[Path]:
    """`with folder_in_place(DIR) as partial:` write DIR's files into `partial`, a hidden folder
    beside DIR; when the block ends it replaces DIR (`swap_into_place`); on any error, Ctrl-C
    included, it is removed and DIR stays as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        swap_into_place(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def file_in_place(path: Path, write: Callable[[Path], None]) -> None:
    """`write(partial)` writes the file into a hidden partial file beside `path` (same suffix, so a
    writer that reads the format from it, as matplotlib does, still can), which then replaces `path`
    in one rename: a reader, or a kill, never sees half a file."""
    path = Path(path)
    partial = path.parent / f".{path.name}.partial-{os.getpid()}{path.suffix}"
    write(partial)
    os.replace(partial, path)
