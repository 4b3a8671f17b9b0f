"""Claims: statements of the post as functions over one seed's metrics, evaluated across seeds.

The checks themselves live in checks.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..analysis.metrics import CLEAN_COS, ClaimResult, Metrics, WorldMetrics
from .checks import Check, Runs


@dataclass
class Claim:
    id: str
    text: str
    """What is checked, precisely."""
    post: str
    """The post's words for it."""
    check: Check


def seeds_needed(seeds_run: int) -> int:
    """A claim holds overall when it holds in at least two thirds of the seeds (7 of 10, 2 of 3)."""
    return math.ceil(2 * seeds_run / 3)


def measure_claims(result, claims: list[Claim], clean_cos: float = CLEAN_COS) -> Metrics:
    """Typed metrics of a trained result (a sampled world's, or stored activations' with the truth
    their `[world]` asks for), with its config's description and `claims` evaluated."""
    # Imported here: the registry (`bl.experiments`) loads without the compiled kernels.
    from ..analysis.measure import measure
    from ..analysis.on_activations import measure_on_activations

    if result.config.world.activations is not None:
        metrics = measure_on_activations(result, clean_cos=clean_cos)
    else:
        metrics = measure(result, clean_cos=clean_cos)
    metrics.description = result.config.description
    metrics.claims = evaluate_claims(claims, metrics)
    return metrics


def evaluate_claims(claims: list[Claim], metrics: Metrics) -> list[ClaimResult]:
    """One result per claim: held per seed, seeds held / run, and the first seed's detail (plus a failing one)."""
    by_seed: dict[int, Runs] = {}
    for run in metrics.runs:
        by_seed.setdefault(run.seed, {})[run.label] = run
    out = []
    for claim in claims:
        results = [_checked(claim, by_seed[seed], metrics.world) for seed in sorted(by_seed)]
        held = [bool(ok) for ok, _ in results]
        details = [f"seed {seed}: {detail}" for seed, (_, detail) in zip(sorted(by_seed), results)]
        failing = [d for ok, d in zip(held, details) if not ok]
        out.append(
            ClaimResult(
                id=claim.id,
                text=claim.text,
                post=claim.post,
                holds=sum(held) >= seeds_needed(len(held)),
                seeds_held=sum(held),
                seeds_run=len(held),
                per_seed=held,
                detail="; ".join(details[:1] + failing[:1])
                if failing and failing[0] != details[0]
                else details[0],
            )
        )
    return out


def _checked(claim: Claim, runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
    """A claim about an SAE the run does not have (a TOML named like a registered experiment, with
    other [[sae]] labels) fails with that said, instead of stopping the run after training."""
    try:
        return claim.check(runs, world)
    except KeyError as err:
        missing = err.args[0] if err.args else "?"
        if missing in runs or not isinstance(missing, str):
            raise
        return False, f"no SAE labelled {missing!r} in this run (labels: {', '.join(runs)})"
