"""Our SynthSAEBench metrics against SAELens' own evaluator, on the same SAEs and the same samples.

    PYTHONPATH=$PWD nice -n 5 /work/saelens-venv/bin/python benchmarks/saelens_eval_check.py

Needs a venv with sae-lens and this project's dependencies (the side venv /work/saelens-venv got
numba, threadpoolctl and tomli-w for it). It trains the SAEs of a small world with a hierarchy
(broken-latents' trainer), measures them with `analysis.measure.measure` (the path every run
takes), then writes each SAE as a SAELens folder, loads it with `sae_lens.SAE.load_from_disk` and
runs `sae_lens.synthetic.eval_sae_on_synthetic_data` on exactly the held-out samples measure drew
(a generator that replays them; a FeatureDictionary holding our directions). MCC, uniqueness and
F1 must agree within --tolerance (1e-3); the other shared metrics are printed beside them.
Exit status 1 when one does not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broken_latents.analysis.measure import EVAL_STREAM, detail_samples, measure  # noqa: E402
from broken_latents.config.schema import (
    ExperimentConfig,
    HierarchyConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)  # noqa: E402
from broken_latents.output.saelens_format import write_saelens  # noqa: E402
from broken_latents.training.loop import train  # noqa: E402
from broken_latents.world.stream import DataStream  # noqa: E402

COMPARED = ("mcc", "uniqueness", "f1")
SHOWN = COMPARED + (
    "precision",
    "recall",
    "sae_l0",
    "true_l0",
    "dead_count",
    "shrinkage",
    "explained_variance",
)


def world_config(features: int, dim: int) -> WorldConfig:
    """Rates falling linearly 0.08 -> 0.002, magnitudes 5 -> 4 with spread 0.5, and three parents
    with two forcing children each, in superposition (dim < features)."""
    hierarchy = [
        HierarchyConfig(parent=p, children=[p + 1, p + 2], mode="force") for p in (0, 3, 6)
    ]
    return WorldConfig(
        features=features,
        dim=dim,
        firing={"linear": [0.08, 0.002]},
        magnitude={"linear": [5.0, 4.0]},
        magnitude_std=0.5,
        seed=0,
        hierarchy=hierarchy,
    )


class Replay:
    """An ActivationGenerator stand-in: hands out the given feature activations in order."""

    def __init__(self, f_BN: torch.Tensor):
        self.f_BN, self.position = f_BN, 0

    def sample(self, batch_size: int) -> torch.Tensor:
        out = self.f_BN[self.position : self.position + batch_size]
        self.position += batch_size
        return out


def saelens_scores(
    folder: Path, directions_ND: torch.Tensor, f_BN: torch.Tensor, batch: int
) -> dict:
    from sae_lens import SAE
    from sae_lens.synthetic import FeatureDictionary
    from sae_lens.synthetic.evals import eval_sae_on_synthetic_data

    sae = SAE.load_from_disk(str(folder), device="cpu")
    features = FeatureDictionary(
        directions_ND.shape[0], directions_ND.shape[1], bias=False, initializer=None
    )
    features.feature_vectors.data.copy_(directions_ND)
    result = eval_sae_on_synthetic_data(
        sae, features, Replay(f_BN), num_samples=len(f_BN), batch_size=batch
    )
    return {
        "mcc": result.mcc,
        "uniqueness": result.uniqueness,
        "f1": result.classification.f1_score,
        "precision": result.classification.precision,
        "recall": result.classification.recall,
        "sae_l0": result.sae_l0,
        "true_l0": result.true_l0,
        "dead_count": result.dead_latents,
        "shrinkage": result.shrinkage,
        "explained_variance": result.explained_variance,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--latents", type=int, default=256)
    parser.add_argument("--samples", type=int, default=400_000, help="training samples per SAE")
    parser.add_argument("--eval-samples", type=int, default=20_000)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()

    import sae_lens

    saes = [
        SAEConfig(
            label="batchtopk",
            architecture="untied",
            latents=args.latents,
            activation="batchtopk",
            k=4,
        ),
        SAEConfig(
            label="relu", architecture="untied", latents=args.latents, activation="relu", l1=3e-2
        ),
        SAEConfig(
            label="tied", architecture="tied", latents=args.latents, activation="relu", l1=3e-2
        ),
    ]
    config = ExperimentConfig(
        name="saelens-eval-check",
        world=world_config(args.features, args.dim),
        train=TrainConfig(samples=args.samples, seeds=1, lr=1e-3, eval_samples=args.eval_samples),
        sae=saes,
    )
    started = time.perf_counter()
    result = train(config, progress=False)
    metrics = measure(result)
    print(
        f"sae-lens {sae_lens.__version__}, torch {torch.__version__}; {args.features} features in {args.dim} dims, "
        f"{args.latents} latents, {args.samples:,} training samples, {args.eval_samples:,} held-out samples; "
        f"trained and measured in {time.perf_counter() - started:.0f} s"
    )
    # The held-out samples measure drew: the same stream, offset and batch (a small world: one draw).
    samples = detail_samples(result)
    assert samples == args.eval_samples, "the check needs measure's one-shot draw (a small world)"
    f_RNB = DataStream(
        result.world, result.seeds, samples, "cpu", offset=EVAL_STREAM, chunk=1
    ).next()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for stack in result.stacks:
            tensors = stack.sae.saelens_tensors(0, stack.tau_SK)  # as the run directory writes them
            folder = write_saelens(
                Path(tmp) / stack.config.label,
                tensors,
                stack.config.activation,
                tied=stack.sae.tied_encoder,
                k=stack.config.k,
            )
            theirs = saelens_scores(
                folder, result.world.directions_ND.cpu(), f_RNB[0].T.contiguous(), batch=4096
            )
            ours = next(run for run in metrics.runs if run.label == stack.config.label)
            print(
                f"\n{stack.config.label}:  {'metric':<20}{'ours':>12}{'SAELens':>12}{'|diff|':>12}"
            )
            for key in SHOWN:
                mine = getattr(ours, key)
                diff = abs(mine - theirs[key])
                flag = ""
                if key in COMPARED and diff > args.tolerance:
                    failures.append(f"{stack.config.label}.{key}")
                    flag = "  MISMATCH"
                print(
                    f"{'':<{len(stack.config.label) + 3}}{key:<20}{mine:>12.6f}{theirs[key]:>12.6f}{diff:>12.2e}{flag}"
                )
    if failures:
        print(f"\nFAILED: {', '.join(failures)} differ by more than {args.tolerance}")
        return 1
    print(f"\nOK: {', '.join(COMPARED)} agree within {args.tolerance} for every SAE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
