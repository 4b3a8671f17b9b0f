"""`inspect` on a large SAE: width 4096 on 768 dims, activations streamed from a float16 .npy.

The SAE and its activations are synthetic (a sparse dictionary of 4096 random unit directions, about
40 firing per row, plus noise; the SAE is that dictionary with a negative encoder bias), since only
speed and memory are measured. Reports wall time per pass, rows per second and peak resident memory;
the time for 10M rows is rows / rate (both passes: every row once, the first COACTIVATION_ROWS again).

    python studies/inspect_scale.py ROWS [DIR]     # e.g. 200000
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import sparse

from broken_latents.inspect import detect
from broken_latents.output.saelens_format import write_saelens

K, D, ACTIVE = 4096, 768, 40


def main(rows: int, folder: Path) -> None:
    rng = np.random.default_rng(0)
    W_dec = rng.normal(size=(K, D)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    write_saelens(
        folder / "sae",
        {
            "W_enc": W_dec.T.copy(),
            "W_dec": W_dec,
            "b_enc": np.full(K, -0.3, np.float32),
            "b_dec": np.zeros(D, np.float32),
        },
        "relu",
    )
    acts = np.lib.format.open_memmap(
        folder / "acts.npy", mode="w+", dtype=np.float16, shape=(rows, D)
    )
    for start in range(0, rows, 20_000):
        n = min(20_000, rows - start)
        idx = rng.integers(0, K, (n, ACTIVE))
        mags = rng.exponential(1.0, (n, ACTIVE)).astype(np.float32) + 0.5
        codes = sparse.csr_matrix(
            (mags.ravel(), idx.ravel(), np.arange(0, n * ACTIVE + 1, ACTIVE)), shape=(n, K)
        )
        acts[start : start + n] = codes @ W_dec + rng.normal(0, 0.05, (n, D)).astype(np.float32)
    acts.flush()
    del acts
    started = time.time()
    outcome = detect.inspect_sae(
        folder / "sae", folder / "acts.npy", out=folder / "out", progress=False
    )
    wall = time.time() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    read = rows + min(rows, detect.COACTIVATION_ROWS)
    print(
        f"{rows:,} rows, K {K}, D {D}: {wall:.1f} s, {read / wall:,.0f} rows/s over both passes, peak RSS {peak:,.0f} MiB; "
        f"broken {sum(r['broken'] for r in outcome.result['latents'])} of {K}; "
        f"10M rows at this rate: {(10_000_000 + detect.COACTIVATION_ROWS) / (read / wall) / 60:.1f} min"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2:
        main(int(sys.argv[1]), Path(sys.argv[2]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(int(sys.argv[1]), Path(tmp))
