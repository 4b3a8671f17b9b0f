"""The consoles every command prints through.

Rich markup is off: a path, a config value or an error message holding square brackets
("expected 2-D [samples, D]") prints exactly as written instead of losing a "tag". Colour, where
we want it, comes from `styled` (a rich Text), never from markup inside a string."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def make_console(stderr: bool = False) -> Console:
    """A console that prints strings verbatim (markup off) and does not colour numbers in them; on
    stderr a long line stays one line (soft wrap), so a message or path is never cut by the terminal width."""
    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=stderr)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from plain strings and (text, style) pairs: `styled(("error", "bold red"), ": ", message)`."""
    return Text.assemble(*parts)
