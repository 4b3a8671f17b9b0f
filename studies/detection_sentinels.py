"""Reference cases the shipped score must get right: the three SAEs of tests/inspect/test_judge_path.py,
trained by its plain PyTorch loop on its worlds (a tied SAE whose five latents are clean, an untied one
that absorbs a child into its parent, an untied one on a parent with two mutually exclusive children),
inspected through the CLI as the test inspects them, with each live latent's truth. choose_policy
(studies/detection_benchmark.py) only takes a model whose verdicts on these 15 latents are all right:
they are the outside judge's path in miniature (issue 18: absorbed and mutually exclusive cases), and
two models that tie on the benchmark can still part on them.

    python studies/detection_sentinels.py   # writes studies/detection-sentinels.json (a minute)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "inspect")]
from inspecting import inspect_latents  # noqa: E402
from test_judge_path import _train_plain, _world  # noqa: E402

from broken_latents.analysis.signals import SIGNALS  # noqa: E402
from broken_latents.analysis.truth import truth_broken  # noqa: E402
from broken_latents.output.saelens_format import load_sae, write_saelens  # noqa: E402

SENTINELS = ROOT / "studies" / "detection-sentinels.json"
CASES = (("tied", True, False), ("untied", False, False), ("exclusive", False, True))
"""(name, tied, exclusive world) as test_judge_path's `judged` fixture builds them."""


def sentinel_rows() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, tied, exclusive in CASES:
            f_BF, x_BD, directions = _world(20_000, 2, exclusive)
            np.save(root / f"acts-{name}.npy", x_BD)
            write_saelens(root / name, _train_plain(tied, exclusive), "relu", tied=tied)
            latents = inspect_latents(root / name, root / f"acts-{name}.npy", root / f"out-{name}")
            h_BK = load_sae(root / name).encode(x_BD)
            live = h_BK.max(0) > 0
            truth, cos, f1 = truth_broken(h_BK, load_sae(root / name).W_dec, directions, f_BF, live)
            rows += [
                {
                    "sae": name,
                    "latent": int(j),
                    "truth": bool(truth[j]),
                    "best_cos": float(cos[j]),
                    "f1": float(f1[j]),
                    **{s: latents[j]["signals"][s] for s in SIGNALS},
                }
                for j in np.flatnonzero(live)
            ]
    return rows


if __name__ == "__main__":
    rows = sentinel_rows()
    SENTINELS.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows)} latents, {sum(r['truth'] for r in rows)} broken -> {SENTINELS}")
