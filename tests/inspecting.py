"""`broken-latents inspect` run through the CLI, as a user runs it, for the test folders."""

from __future__ import annotations

import json
from pathlib import Path

from broken_latents.cli import main


def inspect_latents(sae: Path, activations: Path, out: Path) -> list[dict]:
    """`broken-latents inspect SAE --activations ACTIVATIONS --out OUT`; inspect.json's latents."""
    main(["inspect", str(sae), "--activations", str(activations), "--out", str(out)])
    return json.loads((out / "inspect.json").read_text())["latents"]
