"""The post's experiments as named, declarative configs with the claims each must show.

Each is registered in EXPERIMENTS (registry.py). Where a claim holds only for some rates, the
setting where it holds is registered, and a `-boundary` twin shows where it stops holding.
"""

from __future__ import annotations

import dataclasses

from . import checks as c
from .claims import Claim
from .registry import Experiment, register
from ..config.schema import (
    AuxConfig,
    ExperimentConfig,
    HierarchyConfig,
    InverseConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)


# The post gives the rates' end (0.3) but not their start. An SAE's decoder bias takes the mean
# of every feature it leaves out, so what a left-out feature costs is its variance p(1-p)m^2,
# not p*m^2. Measured over rate starts 0.01, 0.015 and 0.02 x 5 world seeds (docs/rate-start-map.md),
# 0.015 = 0.3 / 20 (p_i = 0.3 (i + 1) / 20) serves every claim at once: both rankings put 4-8 on
# top with 6 first by p*m^2 and 3 clearly next by variance (16.30 against 15.43 for 9). From 0.01
# features 3 and 9 tie on variance (15.22, 15.20) and in superposition 3 is never learned (0/25,
# superposition-parent-6-boundary); from 0.02 the variance top 5 is 3-7 (narrow-independent-boundary).
NARROW_RATES = {"linear": [0.015, 0.3]}
NARROW_MAGNITUDES = {"linear": [20.0, 1.0]}


def narrow_world(
    *hierarchy: HierarchyConfig, dim: int = 50, rates: dict = NARROW_RATES
) -> WorldConfig:
    """20 features ranking 6, 7, 5, 8, 4 by p*m^2 and 5, 6, 7, 4, 8, then 3, by variance."""
    return WorldConfig(
        features=20, dim=dim, firing=rates, magnitude=NARROW_MAGNITUDES, hierarchy=list(hierarchy)
    )


def recipe(samples: int) -> TrainConfig:
    """The plain experiments' training recipe: Adam at 1e-3 with a cosine decay over the last 20%.
    Over 10 seeds it matched or beat lr 3e-4 without decay on every claim measured (children-repel
    4/10 -> 7/10) in 1.3-1.7x less time; orthogonal init with unit-norm rows did worse (recap 3/10)."""
    return TrainConfig(samples=samples, lr=1e-3, lr_decay="cosine")


def tied(
    latents: int, l1: float = 3e-3, aux: AuxConfig | None = None, label: str = "tied"
) -> SAEConfig:
    return SAEConfig(label=label, architecture="tied", latents=latents, l1=l1, aux=aux)


def untied(latents: int, l1: float = 3e-3, label: str = "untied") -> SAEConfig:
    return SAEConfig(label=label, architecture="untied", latents=latents, l1=l1)


# ---------------------------------------------------------------------------------------
# checks specific to one experiment


# ---------------------------------------------------------------------------------------
# the registry

RECAP_HIERARCHY = HierarchyConfig(parent=0, children=[1], mode="force")


def _recap(name: str, rates: list[float], description: str, samples: int) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        description=description,
        world=WorldConfig(
            features=4, dim=50, firing=rates, magnitude=1.0, hierarchy=[RECAP_HIERARCHY]
        ),
        train=recipe(samples),
        sae=[untied(4), tied(4)],
    )


register(
    Experiment(
        _recap(
            "recap-absorption",
            [0.25, 0.05, 0.25, 0.25],
            "4 orthogonal features, child 1 forces parent 0: untied absorbs, tied does not",
            20_000_000,
        ),
        [
            Claim(
                "untied-absorbs",
                "untied: a latent decodes f0+f1 (cos >= 0.5 to both) and the parent latent's "
                "encoder has negative cos with f1",
                "the SAE decoder for feature 1 contains the sum of features 0 and 1",
                c.absorbs("untied", parent=0, child=1),
            ),
            Claim(
                "tied-clean",
                "tied: every feature matched by a latent with decoder cos >= 0.95",
                "using a tied SAE solves absorption in this simple case",
                c.learns_exactly("tied", c.all_features),
            ),
        ],
    )
)

register(
    Experiment(
        _recap(
            "recap-absorption-boundary",
            [0.3, 0.1, 0.25, 0.25],
            "As recap-absorption with a commoner child (0.1) and parent (0.3): the tied SAE rotates",
            20_000_000,
        ),
        [
            Claim(
                "tied-rotates",
                "tied: two latents mix f0 and f1 at |cos| >= 0.5 (the 45-degree pair)",
                "(boundary of) using a tied SAE solves absorption",
                c.rotates_pair("tied", 0, 1),
            ),
        ],
    )
)

register(
    Experiment(
        ExperimentConfig(
            name="wide-independent",
            description="4 independent features, 8 latents: untied misuses spare latents, tied kills them",
            world=WorldConfig(features=4, dim=20, firing=0.2, magnitude=1.0),
            train=recipe(20_000_000),
            sae=[untied(8), tied(8)],
        ),
        [
            Claim(
                "untied-misuses-spare",
                "untied: some latent mixes two features (cos >= 0.5 to both) or two latents "
                "duplicate a feature (cos >= 0.95)",
                "Untied SAEs misuse excess capacity",
                c.combo_or_duplicate("untied"),
            ),
            Claim(
                "tied-kills-spare",
                "tied: all 4 features matched at >= 0.95 and the 4 spare latents dead",
                "The SAE kills off all latents which do not map onto a true feature",
                c.matches_all_and_kills_rest("tied"),
            ),
        ],
    )
)


def _wide_hierarchy(name: str, child_rate: float, description: str) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        description=description,
        world=WorldConfig(
            features=4,
            dim=20,
            firing=[0.2, child_rate, child_rate, 0.2],
            magnitude=1.0,
            hierarchy=[HierarchyConfig(parent=0, children=[1, 2], mode="force")],
        ),
        train=recipe(20_000_000),
        sae=[tied(8)],
    )


register(
    Experiment(
        _wide_hierarchy(
            "wide-hierarchy",
            0.05,
            "Parent 0 with children 1 and 2 (0.05 each), 8 tied latents: still clean",
        ),
        [
            Claim(
                "tied-clean",
                "tied: all 4 features matched at >= 0.95 and the 4 spare latents dead",
                "Tied SAEs continue to solve absorption with more latents than true features",
                c.matches_all_and_kills_rest("tied"),
            )
        ],
    )
)

register(
    Experiment(
        _wide_hierarchy(
            "wide-hierarchy-boundary",
            0.2,
            "As wide-hierarchy with children at 0.2: where tied stops being clean",
        ),
        [
            Claim(
                "tied-rotates",
                "tied: two latents mix f0 and f1 at |cos| >= 0.5",
                "(boundary of) tied SAEs continue to solve absorption",
                c.rotates_pair("tied", 0, 1),
            )
        ],
    )
)

register(
    Experiment(
        ExperimentConfig(
            name="narrow-independent",
            description="20 independent features, 5 latents: both SAEs learn the top 5 by expected MSE (4-8)",
            world=narrow_world(),
            train=recipe(30_000_000),
            # l1 0.03: at 3e-3 the untied L1 is ~0.02 of a loss of ~116 and barely prefers the feature basis.
            sae=[untied(5, l1=0.03), tied(5)],
        ),
        [
            Claim(
                "tied-top5",
                "tied: clean latents for exactly the 5 features of highest p*m^2 (4-8)",
                "the SAE perfectly reconstructs features 4-8, as we predicted",
                c.learns_exactly("tied", c.top_expected_mse),
            ),
            Claim(
                "untied-top5",
                "untied: clean latents for exactly the 5 features of highest p*m^2 (4-8)",
                "The untied SAE also perfectly reconstructs the 5 true features",
                c.learns_exactly("untied", c.top_expected_mse),
            ),
            Claim(
                "untied-same-mse",
                "untied reconstructs as well as tied (MSE within 1%), whatever its basis",
                "The untied SAE also perfectly reconstructs the 5 true features",
                c.same_reconstruction("untied", "tied"),
            ),
        ],
    )
)

register(
    Experiment(
        ExperimentConfig(
            name="narrow-independent-boundary",
            description="As narrow-independent with rates from 0.02: SAEs pick the top 5 by variance (3-7), not p*m^2 (4-8)",
            world=narrow_world(rates={"linear": [0.02, 0.3]}),
            train=recipe(30_000_000),
            sae=[tied(5)],
        ),
        [
            Claim(
                "tied-top5-by-variance",
                "tied: clean latents for exactly the 5 features of highest variance p(1-p)m^2",
                "(boundary of) the SAE will choose to represent the features with the largest expected MSE",
                c.learns_exactly("tied", c.top_variance),
            ),
            Claim(
                "tied-not-top5-by-pm2",
                "tied: the clean latents are not the top 5 by p*m^2 (4-8)",
                "(boundary of) In our toy setup with 5 latents, this corresponds to features 4,5,6,7, and 8",
                c.negated(c.learns_exactly("tied", c.top_expected_mse)),
            ),
        ],
    )
)


register(
    Experiment(
        ExperimentConfig(
            name="narrow-5-7-force-12",
            description="Features 5 and 7 force 12; tied SAE learns broken latents",
            world=narrow_world(HierarchyConfig(parent=12, children=[5, 7])),
            train=recipe(30_000_000),
            sae=[tied(5)],
        ),
        [
            Claim(
                "children-carry-parent",
                "the latents for 5 and 7 have decoder cos >= 0.2 with feature 12",
                "Both these latents now include a portion of feature 12",
                c.children_carry_parent("tied", 12, [5, 7]),
            ),
            Claim(
                "children-repel",
                "the latent for 5 has a negative cos with 7, and vice versa",
                "Features 5 and 7 each also include a negative component of each other",
                c.children_repel("tied", 5, 7),
            ),
            Claim(
                "one-child-repels",
                "at least one of the two child latents has cos <= -0.1 with the other child "
                "(the loss is nearly flat along the rotation that would share it)",
                "Features 5 and 7 each also include a negative component of each other",
                c.one_child_repels("tied", 5, 7),
            ),
            Claim(
                "latents-orthogonal",
                "all live latents mutually orthogonal (|cos| <= 0.05)",
                "the latents are all already orthogonal",
                c.latents_orthogonal("tied"),
            ),
            Claim(
                "peaks-mark-broken",
                "broken latents (best cos < 0.95) show >= 2 activation peaks, clean ones "
                "(best cos >= 0.98) exactly 1",
                "for latents 0 and 4 which correspond to the broken merged latents, "
                "there are 4 visible peaks",
                c.peaks_mark_broken("tied"),
            ),
        ],
    )
)


# -- the activation-orthogonality loss and the rest of the post ----------------------------

POST_AUX = AuxConfig(
    coefficient=10_000.0,
    threshold_ratio=0.7,
    window_batches=50,
    delay_samples=50_000_000,
    warmup_samples=50_000_000,
)
POST_AUX_SAMPLES = 150_000_000


register(
    Experiment(
        ExperimentConfig(
            name="narrow-5-7-force-12-aux",
            description="narrow-5-7-force-12 with the activation-orthogonality loss: clean latents again",
            world=narrow_world(HierarchyConfig(parent=12, children=[5, 7])),
            train=TrainConfig(samples=POST_AUX_SAMPLES),
            sae=[tied(5, aux=POST_AUX)],
        ),
        [
            Claim(
                "aux-clean",
                "every latent matches one feature at >= 0.95, has |cos| <= 0.1 with feature 12 and one "
                "activation peak",
                "we again perfectly recover true features despite co-occurrence",
                c.every_live_latent_clean("tied", max_cos_with={12: 0.1}, single_peak=True),
            ),
            Claim(
                "aux-learns-4-8",
                "the clean latents are features 4-8 (the detail names any feature traded for a neighbour)",
                "(the SAE represents the top 5 by expected MSE)",
                c.learned_set_report("tied", [4, 5, 6, 7, 8]),
            ),
        ],
    )
)

register(
    Experiment(
        ExperimentConfig(
            name="narrow-parent-6",
            description="Features 5 and 7 force 6, the feature of highest expected MSE: tied latents merge 5-7",
            world=narrow_world(HierarchyConfig(parent=6, children=[5, 7])),
            train=recipe(30_000_000),
            sae=[tied(5)],
        ),
        [
            Claim(
                "merged-5-6-7",
                "no latent reaches 0.95 with 5, 6 or 7; at least two latents mix them (|cos| >= 0.3 "
                "with two of them)",
                "we see merged combinations of latents 5,6, and 7",
                c.mixes("tied", [5, 6, 7]),
            ),
            Claim(
                "learns-3",
                "feature 3 (next by expected MSE) gets a clean latent",
                "the SAE is now representing feature 3 as well",
                c.learns_outside("tied", [4, 5, 6, 7, 8], 3),
            ),
        ],
    )
)

register(
    Experiment(
        ExperimentConfig(
            name="narrow-parent-6-aux",
            description="narrow-parent-6 with the activation-orthogonality loss: clean latents, but 6 is dropped",
            world=narrow_world(HierarchyConfig(parent=6, children=[5, 7])),
            train=TrainConfig(samples=POST_AUX_SAMPLES),
            sae=[tied(5, aux=POST_AUX)],
        ),
        [
            Claim(
                "aux-clean",
                "every live latent matches one feature at >= 0.95",
                "the SAE is now correctly representing true features",
                c.every_live_latent_clean("tied"),
            ),
            Claim(
                "drops-6",
                "no latent reaches 0.95 with feature 6",
                "The SAE no longer represents feature 6 at all",
                c.lacks("tied", 6),
            ),
        ],
    )
)

SUPERPOSITION_AUX_CLAIMS = [
    Claim(
        "aux-clean-without-6",
        "with aux: features 3, 4, 5, 7, 8 clean (cos >= 0.9) and 6 absent",
        "The SAE learns clean latents for features 3,4,5,7 and 8, but not feature 6",
        c.learned_set_report("tied-aux", [3, 4, 5, 7, 8], clean=0.9),
    ),
    Claim(
        "aux-latents-clean",
        "with aux: every live latent clean (cos >= 0.9 with one feature) and none on 6, "
        "whichever five features they are",
        "(the aux loss's part of the claim, apart from which features)",
        c.every_live_latent_clean("tied-aux", clean=0.9, max_cos_with={6: 0.5}),
    ),
]


def _superposition(
    name: str, rates: dict, description: str, with_aux: bool = True
) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        description=description,
        world=narrow_world(HierarchyConfig(parent=6, children=[5, 7]), dim=19, rates=rates),
        train=TrainConfig(samples=POST_AUX_SAMPLES),
        sae=[tied(5, l1=1e-2)]
        + ([tied(5, l1=1e-2, aux=POST_AUX, label="tied-aux")] if with_aux else []),
    )


register(
    Experiment(
        _superposition(
            "superposition-parent-6",
            NARROW_RATES,
            "20 features in 19 dims (|cos| = 1/19), 5 and 7 force 6, l1 1e-2: without and with the aux loss",
        ),
        [
            Claim(
                "plain-3-4-8-clean",
                "without aux: features 3, 4 and 8 clean (cos >= 0.9)",
                "features 3, 4, and 8 are clearly tracked",
                c.clean_includes("tied", [3, 4, 8]),
            ),
            Claim(
                "plain-5-7-mixed",
                "without aux: no latent reaches 0.9 with 5, 6 or 7; two latents mix them",
                "features 5, 6, and 7 are mixed together",
                c.mixes("tied", [5, 6, 7], clean=0.9),
            ),
            *SUPERPOSITION_AUX_CLAIMS,
        ],
        clean_cos=0.9,
        # The 20 directions are a simplex frame (every |cos| = 1/19); world seeds differ in its signs,
        # and which features the aux SAE settles on depends on them.
        geometries=5,
    )
)

register(
    Experiment(
        _superposition(
            "superposition-parent-6-boundary",
            {"linear": [0.01, 0.3]},
            "As superposition-parent-6 (plain SAE) with rates from 0.01: 3 and 9 tie on variance; 3 is not learned",
            with_aux=False,
        ),
        [
            Claim(
                "plain-3-not-clean",
                "without aux: no latent reaches 0.9 with feature 3",
                "(boundary of) features 3, 4, and 8 are clearly tracked",
                c.lacks("tied", 3, clean=0.9),
            ),
        ],
        clean_cos=0.9,
        geometries=5,
    )
)


def single_latent_world() -> WorldConfig:
    """4 features: parent 0 (0.3) with conditional children 1, 2 (0.4 given the parent), 3 independent (0.2)."""
    return WorldConfig(
        features=4,
        dim=20,
        firing=[0.3, 0.4, 0.4, 0.2],
        magnitude=1.0,
        hierarchy=[HierarchyConfig(parent=0, children=[1, 2], mode="conditional")],
    )


register(
    Experiment(
        ExperimentConfig(
            name="single-latent",
            description="Parent 0 with conditional children 1, 2; one latent merges parent and children",
            world=single_latent_world(),
            train=recipe(20_000_000),
            sae=[untied(1), tied(1)],
        ),
        [
            Claim(
                "untied-merges",
                "untied: up to its sign, the latent's |cos| is highest with f0, >= 0.3 with f1 and f2, "
                "<= 0.1 with f3",
                "it also merges in the child features 1 and 2. Feature 3 ... is fully excluded",
                c.single_latent_merges("untied"),
            ),
            Claim(
                "tied-merges",
                "tied: the same profile, up to sign",
                "The tied SAE learns a nearly identical representation",
                c.single_latent_merges("tied"),
            ),
            Claim(
                "untied-fires-with-parent",
                "untied: the latent points along +f0 (the other sign is a worse local "
                "minimum that fires when the parent is absent)",
                "The SAE does represent feature 0 in its single latent",
                c.points_at("untied", 0),
            ),
            Claim(
                "tied-fires-with-parent",
                "tied: the latent points along +f0",
                "The SAE does represent feature 0 in its single latent",
                c.points_at("tied", 0),
            ),
            Claim(
                "encoder-like-decoder",
                "untied: the encoder's cosine profile over the features matches the decoder's "
                "(cos >= 0.9)",
                "the encoder of the untied SAE is nearly identical to the decoder",
                c.encoder_profile_matches_decoder("untied", latent=0),
            ),
        ],
    )
)


# The post's future work: "project out the high activating peaks instead of the low activating peaks"
# (see training/inverse.py for how, and why the lowest peak is the parent's). Delay and warm-up 5M each: the
# merged latent has formed its three peaks by then; directions refitted every 1M.
SINGLE_LATENT_INVERSE = InverseConfig(
    coefficient=10.0, refit_samples=1_000_000, delay_samples=5_000_000, warmup_samples=5_000_000
)

register(
    Experiment(
        ExperimentConfig(
            name="single-latent-inverse",
            description="single-latent with the inverse technique: does the one latent become the clean parent f0?",
            world=single_latent_world(),
            train=recipe(20_000_000),
            sae=[
                dataclasses.replace(untied(1), inverse=SINGLE_LATENT_INVERSE),
                dataclasses.replace(tied(1), inverse=SINGLE_LATENT_INVERSE),
            ],
        ),
        [
            Claim(
                "untied-clean-parent",
                "untied with the inverse technique: the latent's decoder has cos >= 0.95 with f0",
                "Solving this using our activation orthogonality technique will require tweaking the technique to do "
                "the inverse ... project out the high activating peaks",
                c.single_latent_is_feature("untied", 0),
            ),
            Claim(
                "tied-clean-parent",
                "tied with the inverse technique: the latent's decoder has cos >= 0.95 with f0",
                "(the same, tied)",
                c.single_latent_is_feature("tied", 0),
            ),
            Claim(
                "untied-clean-unless-opposite",
                "untied: the latent is the clean parent wherever it points along +f0 "
                "(a seed in the -f0 minimum of the plain training stays there)",
                "(which seeds the technique fixes)",
                c.clean_unless_opposite("untied", 0),
            ),
            Claim(
                "tied-clean-unless-opposite",
                "tied: the same",
                "(which seeds the technique fixes)",
                c.clean_unless_opposite("tied", 0),
            ),
        ],
    )
)
