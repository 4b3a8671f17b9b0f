"""`inspect` on a large SAE: width 4096 on 768 dims, activations streamed from a float16 .npy.

The SAE and its activations are synthetic (a dictionary of 4096 random unit directions, ACTIVE of them
firing per row at magnitudes 0.5 + Exp(1), plus noise; the SAE is that dictionary, tied, with encoder
bias BIAS, so about 50 latents fire per row, as in a trained SAE), since only speed and memory are
measured. Two steps, so the file (10M rows: 15 GB) is written once:

    python studies/inspect_scale.py make ROWS DIR     # DIR/sae (SAELens folder) and DIR/acts.npy
    python studies/inspect_scale.py run DIR [ROWS]    # inspect the first ROWS rows (all by default)

`run` prints wall time per phase (the streaming pass, the co-activation pass, the peak fits), CPU
time, the peak resident memory (ru_maxrss) and the mean number of latents firing per row.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

from broken_latents.inspect import detect
from broken_latents.output.saelens_format import write_saelens

K, D, ACTIVE, BIAS = 4096, 768, 40, -1.0
BLOCK = 20_000
LOG_ROWS = 500_000


def make(rows: int, folder: Path) -> None:
    rng = np.random.default_rng(0)
    W_dec = rng.normal(size=(K, D)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_saelens(
        folder / "sae",
        {
            "W_enc": W_dec.T.copy(),
            "W_dec": W_dec,
            "b_enc": np.full(K, BIAS, np.float32),
            "b_dec": np.zeros(D, np.float32),
        },
        "relu",
    )
    acts = np.lib.format.open_memmap(
        folder / "acts.npy", mode="w+", dtype=np.float16, shape=(rows, D)
    )
    started = time.time()
    for start in range(0, rows, BLOCK):
        n = min(BLOCK, rows - start)
        idx = rng.integers(0, K, (n, ACTIVE))
        mags = rng.exponential(1.0, (n, ACTIVE)).astype(np.float32) + 0.5
        codes = sparse.csr_matrix(
            (mags.ravel(), idx.ravel(), np.arange(0, n * ACTIVE + 1, ACTIVE)), shape=(n, K)
        )
        noise = rng.standard_normal((n, D), dtype=np.float32) * 0.05
        acts[start : start + n] = codes @ W_dec + noise
    acts.flush()
    print(f"wrote {rows:,} x {D} float16 to {folder / 'acts.npy'} in {time.time() - started:.0f} s")


def _logged(chunks):
    """detect._chunks, printing the rows read every LOG_ROWS (so a stopped run says how far it got)."""

    def wrapped(file, rows, limit):
        started, logged = time.time(), 0
        for start, chunk in chunks(file, rows, limit):
            if start + len(chunk) - logged >= LOG_ROWS:
                logged = start + len(chunk)
                print(f"  {logged:,} of {limit:,} rows, {time.time() - started:.0f} s", flush=True)
            yield start, chunk

    return wrapped


def run(folder: Path, rows: int | None) -> None:
    detect._chunks = _logged(detect._chunks)
    timings: dict[str, float] = {}
    cpu = time.process_time()
    started = time.time()
    outcome = detect.inspect_sae(
        folder / "sae",
        folder / "acts.npy",
        out=folder / "out",
        limit=rows,
        progress=False,
        timings=timings,
    )
    wall = time.time() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu + children.ru_utime + children.ru_stime
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    result = outcome.result
    n = result["samples"]
    l0 = sum(r["fires"] for r in result["latents"])
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    print(
        f"{n:,} rows, K {K}, D {D}, {os.cpu_count()} cores: {wall:.0f} s wall ({wall / 60:.1f} min; {phases}), "
        f"{cpu:.0f} s CPU, peak RSS {peak:,.0f} MiB, {l0:.1f} latents firing per row; "
        f"broken {sum(r['broken'] for r in result['latents'])} of {K}"
    )


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        run(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
