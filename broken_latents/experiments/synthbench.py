"""SynthSAEBench at the field's scale (SAELens' `sae_lens.synthetic`, arXiv 2602.14687): the post's
questions (tied vs untied, the aux loss, Matryoshka) asked of a world with thousands of features.

`synthbench_world(F, D)` is SynthSAEBench-16k's laws with the number of trees scaled to the feature
count (128 roots at 16,384 features keeps about two thirds of the features in trees, so roots =
round(128 F / 16384)): Zipf firing (exponent 0.5, 0.4 down to 5e-4), trees of branching 4 and depth 3
with every set of siblings mutually exclusive, compensated rates and children scaled by their parent,
low-rank correlation (rank 25, scale 0.1), mean magnitudes 5.0 -> 4.0 with folded-normal spread
(0.5, 0.5), and a bias of norm 0.5.
"""

from __future__ import annotations

from ..config.schema import CorrelationConfig, TreeConfig, WorldConfig


def synthbench_world(features: int, dim: int, seed: int = 0) -> WorldConfig:
    return WorldConfig(
        features=features, dim=dim, seed=seed,
        firing={"zipf": {"exponent": 0.5, "max": 0.4, "min": 5e-4}},
        magnitude={"linear": [5.0, 4.0]},
        magnitude_std={"folded_normal": {"mean": 0.5, "std": 0.5}},
        bias=0.5,
        tree=TreeConfig(roots=max(1, round(128 * features / 16384)), branching=4, depth=3, mutually_exclusive=1.0,
                        mutually_exclusive_min_depth=0, compensate_probabilities=True, scale_children_by_parent=True),
        correlation=CorrelationConfig(rank=25, scale=0.1),
    )
