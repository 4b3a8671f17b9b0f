"""Claims: statements of the post as functions over one seed's metrics, evaluated across seeds.

A check takes `runs` (label -> that SAE's metrics entry for one seed) and `world` (the world
block of metrics.json) and returns (holds, detail); the detail carries the numbers that decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Check = Callable[[dict, dict], "tuple[bool, str]"]


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


def evaluate_claims(claims: list[Claim], metrics: dict) -> list[dict]:
    """One entry per claim: held per seed, seeds held / run, and the first seed's detail (plus a failing one)."""
    by_seed: dict[int, dict] = {}
    for run in metrics["runs"]:
        by_seed.setdefault(run["seed"], {})[run["label"]] = run
    out = []
    for claim in claims:
        results = [claim.check(by_seed[seed], metrics["world"]) for seed in sorted(by_seed)]
        held = [bool(ok) for ok, _ in results]
        details = [f"seed {seed}: {detail}" for seed, (_, detail) in zip(sorted(by_seed), results)]
        failing = [d for ok, d in zip(held, details) if not ok]
        out.append({
            "id": claim.id,
            "text": claim.text,
            "post": claim.post,
            "holds": sum(held) >= seeds_needed(len(held)),
            "seeds_held": sum(held),
            "seeds_run": len(held),
            "per_seed": held,
            "detail": "; ".join(details[:1] + failing[:1]) if failing and failing[0] != details[0] else details[0],
        })
    return out


# ---------------------------------------------------------------------------------------
# building blocks for checks


def dec(run: dict) -> np.ndarray:
    return np.asarray(run["decoder_cos"])


def live_latents(run: dict) -> list[int]:
    return [j for j in range(len(run["decoder_cos"])) if j not in run["dead_latents"]]


def latent_for(run: dict, feature: int) -> tuple[int, float]:
    """The live latent whose decoder is closest to `feature`, and that cosine."""
    cos = dec(run)[:, feature]
    live = live_latents(run)
    j = max(live, key=lambda k: cos[k])
    return j, float(cos[j])


def learns_exactly(label: str, features_from_world: Callable[[dict, int], list[int]], clean: float = 0.95) -> Check:
    """Check: the SAE's clean latents cover exactly the given features (each matched at >= clean)."""

    def check(runs: dict, world: dict) -> tuple[bool, str]:
        run = runs[label]
        want = sorted(features_from_world(world, len(run["decoder_cos"])))
        got = sorted(m["feature"] for m in run["matches"] if m["cos"] >= clean)
        return got == want, f"{label} learned {got}, expected {want}"

    return check


def top_expected_mse(world: dict, latents: int) -> list[int]:
    return world["expected_mse_ranking"][:latents]


def top_variance(world: dict, latents: int) -> list[int]:
    return world["variance_ranking"][:latents]


def all_features(world: dict, latents: int) -> list[int]:
    return list(range(len(world["expected_mse"])))


def matches_all_and_kills_rest(label: str, clean: float = 0.95) -> Check:
    def check(runs: dict, world: dict) -> tuple[bool, str]:
        run = runs[label]
        n_features = len(world["expected_mse"])
        learned = sorted(m["feature"] for m in run["matches"] if m["cos"] >= clean)
        spare = len(run["decoder_cos"]) - n_features
        dead = len(run["dead_latents"])
        ok = learned == list(range(n_features)) and dead == spare
        return ok, f"{label} learned {learned} of {n_features}; dead {dead} of {spare} spare latents"

    return check


def combo_or_duplicate(label: str, combo_cos: float = 0.5, duplicate_cos: float = 0.95) -> Check:
    """Check: some live latent mixes two features (cos >= combo_cos with both), or two latents duplicate one feature."""

    def check(runs: dict, world: dict) -> tuple[bool, str]:
        run = runs[label]
        cos = dec(run)
        live = live_latents(run)
        combos = [(j, [int(i) for i in np.flatnonzero(cos[j] >= combo_cos)]) for j in live]
        combos = [(j, fs) for j, fs in combos if len(fs) >= 2]
        dupes = [i for i in range(cos.shape[1]) if sum(cos[j, i] >= duplicate_cos for j in live) >= 2]
        parts = [f"combo latents {combos}" if combos else "no combo latent",
                 f"duplicated features {dupes}" if dupes else "no duplicate"]
        return bool(combos or dupes), f"{label}: " + ", ".join(parts)

    return check
