"""SAELens' side of benchmarks/bench_scale.py: sampling and BatchTopK training throughput of
`sae_lens.synthetic` at one world size. Runs in a venv with sae-lens (bench_scale.py calls it in
/work/saelens-venv by subprocess) and prints one JSON line.

    /work/saelens-venv/bin/python benchmarks/saelens_scale_bench.py --features 2048 --dim 256

The world has SynthSAEBench-16k's laws with the roots scaled to the size (Zipf firing 0.4 -> 5e-4,
exponent 0.5; a tree of branching 4, depth 3, mutually exclusive; low-rank correlation rank 25,
scale 0.1; magnitudes 5 -> 4, folded-normal spread 0.5 / 0.5; bias 0.5), without the
orthogonalisation (minutes on 2 cores; it moves the directions, not the cost of sampling or training).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.synthetic import (
    FoldedNormalMagnitudeConfig,
    HierarchyConfig,
    LinearMagnitudeConfig,
    LowRankCorrelationConfig,
    SyntheticModel,
    SyntheticModelConfig,
    ZipfianFiringProbabilityConfig,
)
from sae_lens.synthetic.training import train_toy_sae


def model_config(features: int, dim: int) -> SyntheticModelConfig:
    return SyntheticModelConfig(
        num_features=features,
        hidden_dim=dim,
        firing_probability=ZipfianFiringProbabilityConfig(
            exponent=0.5, max_prob=0.4, min_prob=5e-4
        ),
        hierarchy=HierarchyConfig(
            total_root_nodes=max(1, round(128 * features / 16384)),
            branching_factor=4,
            max_depth=3,
            mutually_exclusive_portion=1.0,
            mutually_exclusive_min_depth=0,
            compensate_probabilities=True,
            scale_children_by_parent=True,
        ),
        orthogonalization=None,
        correlation=LowRankCorrelationConfig(rank=25, correlation_scale=0.1),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        bias=0.5,
        seed=0,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, required=True)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--latents", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--sample-seconds", type=float, default=4.0)
    parser.add_argument("--train-samples", type=int, default=60_000)
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    model = SyntheticModel(model_config(args.features, args.dim), device="cpu")
    build = time.perf_counter() - started

    model.sample(args.batch)  # warm-up
    drawn, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.sample_seconds:
        model.sample(args.batch)
        drawn += args.batch
    sampling = drawn / (time.perf_counter() - started)
    _, f = model.sample_with_features(20_000)
    true_l0 = float((f > 0).sum(1).float().mean())

    sae = BatchTopKTrainingSAE(
        BatchTopKTrainingSAEConfig(d_in=args.dim, d_sae=args.latents, k=args.k)
    )
    started = time.perf_counter()
    train_toy_sae(
        sae,
        model.feature_dict,
        model.activation_generator,
        training_samples=args.train_samples,
        batch_size=args.batch,
        lr=3e-4,
    )
    training = args.train_samples / (time.perf_counter() - started)
    print(
        json.dumps(
            {
                "build_seconds": round(build, 2),
                "sampling": sampling,
                "training": training,
                "true_l0": round(true_l0, 2),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
