"""SAE training speed on stored activations: the package against a plain PyTorch loop, same file, same run.

    python benchmarks/bench_activations.py [--activations FILE] [--samples N] [--latents K]

Without --activations it builds the default language world first (examples/language.toml) and also
reports the transformer's training time and the activation file's size. Both sides train one
untied ReLU SAE (K latents, batch 1024, Adam at 1e-3) for the same number of samples; the plain loop
is what a notebook does: the file loaded into memory, a random batch by index every step,
torch.optim.Adam, torch's default thread count.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from broken_latents.config.schema import ExperimentConfig, SAEConfig, TrainConfig, WorldConfig
from broken_latents.training.on_activations import train_on_activations

BATCH, LR, L1 = 1024, 1e-3, 1.0


def plain_loop(path: Path, samples: int, latents: int) -> float:
    """samples/s of a notebook's SAE loop over the same file."""
    x = torch.from_numpy(np.load(path))
    n, dim = x.shape
    gen = torch.Generator().manual_seed(0)
    W_enc = torch.nn.Parameter(torch.randn(dim, latents, generator=gen) / dim**0.5)
    W_dec = torch.nn.Parameter(F.normalize(torch.randn(latents, dim, generator=gen), dim=1))
    b_enc = torch.nn.Parameter(torch.zeros(latents))
    b_dec = torch.nn.Parameter(x[:65536].mean(0).clone())
    optimiser = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=LR)
    steps = samples // BATCH
    start = time.perf_counter()
    for _ in range(steps):
        batch = x[torch.randint(0, int(n * 0.8), (BATCH,), generator=gen)]
        h = torch.relu((batch - b_dec) @ W_enc + b_enc)
        x_hat = h @ W_dec + b_dec
        loss = (x_hat - batch).pow(2).sum(-1).mean() + L1 * (h * W_dec.norm(dim=-1)).sum(-1).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return steps * BATCH / (time.perf_counter() - start)


def package(path: Path, samples: int, latents: int) -> float:
    config = ExperimentConfig(
        name="bench",
        world=WorldConfig(activations=str(path), held_out=0.2),
        train=TrainConfig(samples=samples, batch_size=BATCH, lr=LR, seeds=1),
        sae=[SAEConfig(label="untied", architecture="untied", latents=latents, l1=L1)],
    )
    result = train_on_activations(config, progress=False)
    return result.samples_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--activations", type=Path)
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--latents", type=int, default=64)
    args = parser.parse_args()
    rows = []
    path = args.activations
    if path is None:
        from broken_latents.language import build_language, load_language

        folder = Path(tempfile.mkdtemp()) / "language"
        built = build_language(
            load_language(Path(__file__).parent.parent / "examples" / "language.toml"), folder
        )
        path = folder / "activations.npy"
        s = built.summary
        rows += [
            (
                "transformer training",
                f"{s['transformer']['train_seconds']:.1f} s "
                f"({s['config']['transformer']['steps']} steps, test loss {s['transformer']['test_loss']})",
            ),
            ("language world end to end", f"{s['wall_seconds']:.1f} s"),
            (
                "activation file",
                f"{s['activation_bytes'] / 2**20:.1f} MiB ({s['tokens']} x {s['dim']} float32)",
            ),
        ]
    ours = package(path, args.samples, args.latents)
    plain = plain_loop(path, args.samples, args.latents)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plain_one = plain_loop(path, args.samples, args.latents)
    torch.set_num_threads(threads)
    rows += [
        ("SAE on activations, broken-latents", f"{ours / 1e3:.0f}k samples/s"),
        (
            f"SAE on activations, plain PyTorch loop ({threads} threads)",
            f"{plain / 1e3:.0f}k samples/s",
        ),
        ("SAE on activations, plain PyTorch loop (1 thread)", f"{plain_one / 1e3:.0f}k samples/s"),
        (
            "ratio to the plain loop (default threads, 1 thread)",
            f"{ours / plain:.2f}x, {ours / plain_one:.2f}x",
        ),
    ]
    print(
        f"| measure ({args.latents} latents, batch {BATCH}, {args.samples:,} samples) | value |\n|---|---|"
    )
    for name, value in rows:
        print(f"| {name} | {value} |")
    json.dump(dict(rows), sys.stderr)


if __name__ == "__main__":
    main()
