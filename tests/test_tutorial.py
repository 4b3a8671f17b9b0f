"""examples/tutorial.ipynb runs top to bottom (nbclient executes every cell in a fresh kernel) at a
small budget, and its outputs show what the notebook says they show."""

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tutorial.ipynb"
SEEDS = 2


def _stream_text(cell) -> str:
    return "".join(
        o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
    )


@pytest.mark.slow
def test_tutorial_notebook_runs_and_shows_broken_latents(tmp_path, monkeypatch):
    out = tmp_path / "tutorial-run"
    monkeypatch.setenv("TUTORIAL_SAMPLES", "2000000")
    monkeypatch.setenv("TUTORIAL_SEEDS", str(SEEDS))
    monkeypatch.setenv("TUTORIAL_OUT", str(out))
    # the kernel imports this checkout's package, wherever pytest runs from
    root = str(NOTEBOOK.parents[1])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # raises CellExecutionError, naming the cell, if any cell fails
    nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]

    # the table cell prints one row per SAE and seed, read back by bl.load_run
    table = next(_stream_text(c) for c in code if "absorption" in c.source and "print" in c.source)
    rows = re.findall(
        r"^(\w+)\s+seed (\d+)\s+learned \[([\d, ]*)\]\s+broken \[([\d, ]*)\]", table, re.M
    )
    assert sorted({(label, int(seed)) for label, seed, _, _ in rows}) == sorted(
        (label, s) for label in ("matryoshka", "tied", "untied") for s in range(SEEDS)
    )

    import broken_latents as bl

    run = bl.load_run(out)
    by_key = {(r.label, r.seed): r for r in run.metrics.runs}
    for label in ("tied", "untied"):
        for seed in range(SEEDS):
            r = by_key[(label, seed)]
            # 3 latents for 4 features with a parent and two children: the narrow SAE cannot give
            # every feature its own latent, and what it mixes shows as broken latents and absorption
            assert len(r.learned_features) < 4
            assert r.broken_latents, f"{label} seed {seed}: a narrow SAE with no broken latent"
            assert max(r.absorption) > 0.3, f"{label} seed {seed}: absorption {r.absorption}"
            # the printed row agrees with metrics.json
            row = next(x for x in rows if x[0] == label and int(x[1]) == seed)
            assert [int(v) for v in row[3].split(",") if v.strip()] == r.broken_latents
    # the Matryoshka SAE has its prefix widths
    assert run.saes["matryoshka"][0].widths == [1, 4]

    heatmap = out / "tutorial-heatmap.png"
    assert heatmap.is_file() and heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert heatmap.stat().st_size > 5_000
    # the last cell prints h = encode(F): one row per feature, 3 tied latents each
    encoded = _stream_text(code[-1])
    assert encoded.startswith("tensor(") and encoded.count("[") == 1 + 4
