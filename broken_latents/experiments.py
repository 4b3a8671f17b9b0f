"""The post's experiments as named, declarative configs with the claims each must show.

EXPERIMENTS is the one registry. Where a claim holds only for some rates, the setting where it
holds is registered, and a `-boundary` twin shows where it stops holding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .claims import (
    Claim,
    all_features,
    combo_or_duplicate,
    dec,
    latent_for,
    learns_exactly,
    live_latents,
    matches_all_and_kills_rest,
    top_expected_mse,
)
from .config import AuxConfig, ExperimentConfig, HierarchyConfig, SAEConfig, TrainConfig, WorldConfig


@dataclass
class Experiment:
    config: ExperimentConfig
    claims: list[Claim] = field(default_factory=list)
    clean_cos: float = 0.95
    """Decoder cosine from which a latent counts as clean (superposition blurs, so it uses less)."""


NARROW_RATES = {"linear": [0.02, 0.3]}
NARROW_MAGNITUDES = {"linear": [20.0, 1.0]}


def narrow_world(*hierarchy: HierarchyConfig, dim: int = 50) -> WorldConfig:
    """20 features whose expected MSE (p * m^2) ranks 6, 5, 7, 4, 8 first, then 3."""
    return WorldConfig(features=20, dim=dim, firing=NARROW_RATES, magnitude=NARROW_MAGNITUDES, hierarchy=list(hierarchy))


def tied(latents: int, l1: float = 3e-3, aux: AuxConfig | None = None, label: str = "tied") -> SAEConfig:
    return SAEConfig(label=label, architecture="tied", latents=latents, l1=l1, aux=aux)


def untied(latents: int, l1: float = 3e-3, label: str = "untied") -> SAEConfig:
    return SAEConfig(label=label, architecture="untied", latents=latents, l1=l1)


# ---------------------------------------------------------------------------------------
# checks specific to one experiment


def untied_absorbs(runs: dict, world: dict) -> tuple[bool, str]:
    """Recap: the child latent decodes f0 + f1; the parent latent's encoder is negative on f1."""
    run = runs["untied"]
    cos = dec(run)
    combo = max(live_latents(run), key=lambda j: min(cos[j, 0], cos[j, 1]))
    parent = max((j for j in live_latents(run) if j != combo), key=lambda j: cos[j, 0])
    enc_parent_child = run["encoder_cos"][parent][1]
    ok = cos[combo, 0] >= 0.5 and cos[combo, 1] >= 0.5 and enc_parent_child < 0
    return ok, (f"latent {combo} decodes f0 {cos[combo, 0]:.2f}, f1 {cos[combo, 1]:.2f}; "
                f"parent latent {parent} encoder cos with f1 {enc_parent_child:.2f}")


def tied_rotates_pair(runs: dict, world: dict) -> tuple[bool, str]:
    """Boundary: parent and child come out as the 45-degree pair (f0 +- f1)/sqrt 2 instead of themselves."""
    run = runs["tied"]
    cos = dec(run)
    rotated = [j for j in live_latents(run) if abs(cos[j, 0]) >= 0.5 and abs(cos[j, 1]) >= 0.5]
    return len(rotated) >= 2, f"latents mixing f0 and f1 at |cos| >= 0.5: {rotated}"


def children_carry_parent(parent: int, children: list[int], min_cos: float = 0.2):
    def check(runs: dict, world: dict) -> tuple[bool, str]:
        run = runs["tied"]
        cos = dec(run)
        found = [(c, *latent_for(run, c)) for c in children]
        ok = all(cos[j, parent] >= min_cos for _, j, _ in found)
        return ok, ", ".join(f"latent {j} (f{c} {cc:.2f}) has f{parent} {cos[j, parent]:+.2f}" for c, j, cc in found)

    return check


def children_repel(a: int, b: int):
    def check(runs: dict, world: dict) -> tuple[bool, str]:
        run = runs["tied"]
        cos = dec(run)
        ja, _ = latent_for(run, a)
        jb, _ = latent_for(run, b)
        ok = cos[ja, b] < 0 and cos[jb, a] < 0
        return ok, f"latent {ja} has f{b} {cos[ja, b]:+.3f}; latent {jb} has f{a} {cos[jb, a]:+.3f}"

    return check


def tied_latents_orthogonal(max_abs: float = 0.05):
    def check(runs: dict, world: dict) -> tuple[bool, str]:
        run = runs["tied"]
        live = live_latents(run)
        lc = np.abs(np.asarray(run["latent_cos"])[np.ix_(live, live)] - np.eye(len(live)))
        worst = float(lc.max()) if len(live) > 1 else 0.0
        return worst <= max_abs, f"max |cos| between live latents {worst:.3f}"

    return check


def peaks_mark_broken(clean: float = 0.98):
    def check(runs: dict, world: dict) -> tuple[bool, str]:
        run = runs["tied"]
        best = dec(run).max(axis=1)
        peaks = run["activation_peaks"]
        live = live_latents(run)
        broken = [j for j in live if best[j] < 0.95]
        clean_ones = [j for j in live if best[j] >= clean]
        ok = bool(broken) and all(peaks[j] >= 2 for j in broken) and all(peaks[j] == 1 for j in clean_ones)
        return ok, (f"broken {[(j, peaks[j]) for j in broken]} (latent, peaks); "
                    f"clean {[(j, peaks[j]) for j in clean_ones]}")

    return check


# ---------------------------------------------------------------------------------------
# the registry

RECAP_HIERARCHY = HierarchyConfig(parent=0, children=[1], mode="force")


def _recap(name: str, rates: list[float], description: str, samples: int) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        description=description,
        world=WorldConfig(features=4, dim=50, firing=rates, magnitude=1.0, hierarchy=[RECAP_HIERARCHY]),
        train=TrainConfig(samples=samples),
        sae=[untied(4), tied(4)],
    )


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    EXPERIMENTS[experiment.config.name] = experiment
    return experiment


register(Experiment(
    _recap("recap-absorption", [0.25, 0.05, 0.25, 0.25],
           "4 orthogonal features, child 1 forces parent 0: untied absorbs, tied does not", 20_000_000),
    [
        Claim("untied-absorbs", "untied: a latent decodes f0+f1 (cos >= 0.5 to both) and the parent latent's "
              "encoder has negative cos with f1", "the SAE decoder for feature 1 contains the sum of features 0 and 1",
              untied_absorbs),
        Claim("tied-clean", "tied: every feature matched by a latent with decoder cos >= 0.95",
              "using a tied SAE solves absorption in this simple case", learns_exactly("tied", all_features)),
    ],
))

register(Experiment(
    _recap("recap-absorption-boundary", [0.3, 0.1, 0.25, 0.25],
           "As recap-absorption with a commoner child (0.1) and parent (0.3): the tied SAE rotates", 20_000_000),
    [
        Claim("tied-rotates", "tied: two latents mix f0 and f1 at |cos| >= 0.5 (the 45-degree pair)",
              "(boundary of) using a tied SAE solves absorption", tied_rotates_pair),
    ],
))

register(Experiment(
    ExperimentConfig(
        name="wide-independent",
        description="4 independent features, 8 latents: untied misuses spare latents, tied kills them",
        world=WorldConfig(features=4, dim=20, firing=0.2, magnitude=1.0),
        train=TrainConfig(samples=20_000_000),
        sae=[untied(8), tied(8)],
    ),
    [
        Claim("untied-misuses-spare", "untied: some latent mixes two features (cos >= 0.5 to both) or two latents "
              "duplicate a feature (cos >= 0.95)", "Untied SAEs misuse excess capacity", combo_or_duplicate("untied")),
        Claim("tied-kills-spare", "tied: all 4 features matched at >= 0.95 and the 4 spare latents dead",
              "The SAE kills off all latents which do not map onto a true feature", matches_all_and_kills_rest("tied")),
    ],
))


def _wide_hierarchy(name: str, child_rate: float, description: str) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        description=description,
        world=WorldConfig(features=4, dim=20, firing=[0.2, child_rate, child_rate, 0.2], magnitude=1.0,
                          hierarchy=[HierarchyConfig(parent=0, children=[1, 2], mode="force")]),
        train=TrainConfig(samples=20_000_000),
        sae=[tied(8)],
    )


register(Experiment(
    _wide_hierarchy("wide-hierarchy", 0.05, "Parent 0 with children 1 and 2 (0.05 each), 8 tied latents: still clean"),
    [Claim("tied-clean", "tied: all 4 features matched at >= 0.95 and the 4 spare latents dead",
           "Tied SAEs continue to solve absorption with more latents than true features",
           matches_all_and_kills_rest("tied"))],
))

register(Experiment(
    _wide_hierarchy("wide-hierarchy-boundary", 0.2, "As wide-hierarchy with children at 0.2: where tied stops being clean"),
    [Claim("tied-rotates", "tied: two latents mix f0 and f1 at |cos| >= 0.5",
           "(boundary of) tied SAEs continue to solve absorption", tied_rotates_pair)],
))

register(Experiment(
    ExperimentConfig(
        name="narrow-independent",
        description="20 independent features, 5 latents: both SAEs learn the top 5 by expected MSE (4-8)",
        world=narrow_world(),
        train=TrainConfig(samples=30_000_000),
        sae=[untied(5), tied(5)],
    ),
    [
        Claim("tied-top5", "tied: clean latents for exactly the 5 features of highest p*m^2 (4-8)",
              "the SAE perfectly reconstructs features 4-8, as we predicted", learns_exactly("tied", top_expected_mse)),
        Claim("untied-top5", "untied: clean latents for exactly the 5 features of highest p*m^2 (4-8)",
              "The untied SAE also perfectly reconstructs the 5 true features", learns_exactly("untied", top_expected_mse)),
    ],
))

register(Experiment(
    ExperimentConfig(
        name="narrow-5-7-force-12",
        description="Features 5 and 7 force 12; tied SAE learns broken latents",
        world=narrow_world(HierarchyConfig(parent=12, children=[5, 7])),
        train=TrainConfig(samples=30_000_000),
        sae=[tied(5)],
    ),
    [
        Claim("children-carry-parent", "the latents for 5 and 7 have decoder cos >= 0.2 with feature 12",
              "Both these latents now include a portion of feature 12", children_carry_parent(12, [5, 7])),
        Claim("children-repel", "the latent for 5 has a negative cos with 7, and vice versa",
              "Features 5 and 7 each also include a negative component of each other", children_repel(5, 7)),
        Claim("latents-orthogonal", "all live latents mutually orthogonal (|cos| <= 0.05)",
              "the latents are all already orthogonal", tied_latents_orthogonal()),
        Claim("peaks-mark-broken", "broken latents (best cos < 0.95) show >= 2 activation peaks, clean ones "
              "(best cos >= 0.98) exactly 1", "for latents 0 and 4 which correspond to the broken merged latents, "
              "there are 4 visible peaks", peaks_mark_broken()),
    ],
))


def get(name: str) -> Experiment:
    return EXPERIMENTS[name]
