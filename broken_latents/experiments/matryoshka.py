"""The post's Matryoshka argument, tested head-on with Matryoshka SAEs instead of a 1-latent stand-in.

The post trains a single-latent SAE and finds that it merges the parent with its children, so
"the narrow prefixes of a Matryoshka SAE cannot be trusted to hold clean parents". Here the
prefix really is part of a wider SAE that can represent the children in its later latents.
Each claim states the post's expectation; the measured counts go in the README whatever they are.
"""

from __future__ import annotations

from dataclasses import replace

from . import checks as c
from .claims import Claim
from .post import (
    POST_AUX,
    POST_AUX_SAMPLES,
    SINGLE_LATENT_INVERSE,
    narrow_world,
    recipe,
    tied,
    untied,
)
from .registry import Experiment, get, register
from ..config.schema import ExperimentConfig, HierarchyConfig, TrainConfig, WorldConfig


def nested(sae, widths: list[int], label: str):
    """`sae` as a Matryoshka SAE with these prefix widths."""
    return replace(sae, label=label, matryoshka_widths=widths)


SINGLE_LATENT_WORLD = get(
    "single-latent"
).config.world  # parent 0; children 1, 2 fire only with it; 3 alone

register(
    Experiment(
        ExperimentConfig(
            name="matryoshka-single-latent",
            description="Single-latent world, Matryoshka widths [1, 4] against plain 4-latent SAEs: "
            "is the width-1 latent the clean parent, or the post's merged latent?",
            world=SINGLE_LATENT_WORLD,
            train=recipe(20_000_000),
            sae=[
                nested(tied(4), [1, 4], "tied-nested"),
                nested(untied(4), [1, 4], "untied-nested"),
                tied(4),
                untied(4),
            ],
        ),
        [
            Claim(
                "tied-prefix-merges",
                "tied Matryoshka: latent 0 (the width-1 prefix) merges parent and children: "
                "|cos| highest with f0, >= 0.3 with f1 and f2, <= 0.1 with f3",
                "a narrow SAE will learn a broken latent merging the parent and child features together",
                c.single_latent_merges("tied-nested"),
            ),
            Claim(
                "untied-prefix-merges",
                "untied Matryoshka: latent 0 merges parent and children, as above",
                "we should not expect Matryoshka SAEs to perfectly solve absorption",
                c.single_latent_merges("untied-nested"),
            ),
            Claim(
                "tied-prefix-hedges",
                "tied Matryoshka: latent 0 carries the children along its parent component "
                "(sum of cos with f1, f2, in the sign of its f0 cos, >= 0.3)",
                "it also merges in the child features 1 and 2",
                c.prefix_hedges("tied-nested", 0, [1, 2], 0.3),
            ),
            Claim(
                "plain-tied-parent-clean",
                "plain tied SAE of the same width: its f0 latent is clean and does not "
                "hedge (every feature matched at >= 0.95)",
                "Tied SAEs continue to solve absorption with more latents",
                c.learns_exactly("tied", c.all_features),
            ),
        ],
    )
)

register(
    Experiment(
        ExperimentConfig(
            name="matryoshka-narrow-5-7-force-12",
            description="The 5,7 -> 12 narrow world with a fully nested tied Matryoshka SAE (widths 1..5) "
            "beside the plain tied SAE: do the nested prefixes mend the broken child latents?",
            world=narrow_world(HierarchyConfig(parent=12, children=[5, 7])),
            train=recipe(30_000_000),
            sae=[nested(tied(5), [1, 2, 3, 4, 5], "tied-nested"), tied(5)],
        ),
        [
            Claim(
                "nested-children-carry-parent",
                "Matryoshka: the latents for 5 and 7 still have decoder cos >= 0.2 with feature 12",
                "we should not expect Matryoshka SAEs to perfectly solve absorption",
                c.children_carry_parent("tied-nested", 12, [5, 7]),
            ),
            Claim(
                "plain-children-carry-parent",
                "plain tied (control): the latents for 5 and 7 have cos >= 0.2 with 12",
                "Both these latents now include a portion of feature 12",
                c.children_carry_parent("tied", 12, [5, 7]),
            ),
        ],
    )
)

THREE_CHILDREN_WORLD = WorldConfig(
    features=8,
    dim=20,
    firing=[0.3, 0.3, 0.3, 0.3, 0.2, 0.2, 0.2, 0.2],
    magnitude=1.0,
    hierarchy=[HierarchyConfig(parent=0, children=[1, 2, 3], mode="conditional")],
)

register(
    Experiment(
        ExperimentConfig(
            name="matryoshka-three-children",
            description="A parent (0) with three conditional children (1-3) and four independent features; "
            "Matryoshka widths [1, 8] against plain SAEs of width 8",
            world=THREE_CHILDREN_WORLD,
            train=recipe(20_000_000),
            sae=[
                nested(tied(8), [1, 8], "tied-nested"),
                nested(untied(8), [1, 8], "untied-nested"),
                tied(8),
                untied(8),
            ],
        ),
        [
            Claim(
                "tied-prefix-clean",
                "tied Matryoshka: latent 0 (the width-1 prefix) is the clean parent (cos >= 0.95 "
                "with f0)",
                "This allows the narrower SAE sizes to represent parent features, hopefully without any "
                "broken latents",
                c.latent_is_clean("tied-nested", 0, 0),
            ),
            Claim(
                "tied-prefix-hedges",
                "tied Matryoshka: latent 0 carries the children along its parent component "
                "(sum of cos with f1-f3, in the sign of its f0 cos, >= 0.3)",
                "a narrow SAE will learn a broken latent merging the parent and child features together",
                c.prefix_hedges("tied-nested", 0, [1, 2, 3], 0.3),
            ),
            Claim(
                "untied-prefix-hedges",
                "untied Matryoshka: latent 0 carries the children as above",
                "we should not expect Matryoshka SAEs to perfectly solve absorption",
                c.prefix_hedges("untied-nested", 0, [1, 2, 3], 0.3),
            ),
            Claim(
                "plain-tied-clean",
                "plain tied SAE of width 8: all 8 features clean",
                "Tied SAEs continue to solve absorption",
                c.learns_exactly("tied", c.all_features),
            ),
        ],
    )
)

register(
    Experiment(
        ExperimentConfig(
            name="matryoshka-aux-single-latent",
            description="The post's suggestion: Matryoshka [1, 4] plus the activation-orthogonality loss on the "
            "single-latent world; does the width-1 latent become the clean parent?",
            world=SINGLE_LATENT_WORLD,
            train=TrainConfig(samples=POST_AUX_SAMPLES),
            sae=[nested(tied(4, aux=POST_AUX), [1, 4], "tied-nested-aux")],
        ),
        [
            Claim(
                "prefix-clean-parent",
                "latent 0 (the width-1 prefix) is the clean parent: cos >= 0.95 with f0",
                "We may be able to combine Matryoshka SAEs with variations on our activation orthogonality technique to "
                "project out the child features from Matryoshka parent latents",
                c.latent_is_clean("tied-nested-aux", 0, 0),
            ),
            Claim(
                "prefix-clean-on-one-feature",
                "latent 0 no longer merges: |cos| >= 0.95 with a single feature, "
                "of either sign (the detail says which)",
                "(what the aux loss does to the prefix; not in the post)",
                c.latent_is_one_of("tied-nested-aux", 0, [0, 1, 2, 3]),
            ),
            Claim(
                "prefix-becomes-a-child",
                "latent 0 becomes a child feature (|cos| >= 0.95 with f1 or f2)",
                "(what the aux loss does to the prefix; not in the post)",
                c.latent_is_one_of("tied-nested-aux", 0, [1, 2]),
            ),
        ],
    )
)

register(
    Experiment(
        ExperimentConfig(
            name="matryoshka-inverse-single-latent",
            description="Matryoshka [1, 4] plus the inverse technique (project the higher peaks' directions out of each "
            "latent) on the single-latent world: does the width-1 latent become the clean parent?",
            world=SINGLE_LATENT_WORLD,
            train=recipe(20_000_000),
            sae=[
                replace(
                    nested(tied(4), [1, 4], "tied-nested-inverse"), inverse=SINGLE_LATENT_INVERSE
                ),
                replace(
                    nested(untied(4), [1, 4], "untied-nested-inverse"),
                    inverse=SINGLE_LATENT_INVERSE,
                ),
            ],
        ),
        [
            Claim(
                "tied-prefix-clean-parent",
                "tied: latent 0 (the width-1 prefix) is the clean parent: cos >= 0.95 with f0",
                "We may be able to combine Matryoshka SAEs with variations on our activation orthogonality technique to "
                "project out the child features from Matryoshka parent latents",
                c.latent_is_clean("tied-nested-inverse", 0, 0),
            ),
            Claim(
                "untied-prefix-clean-parent",
                "untied: latent 0 is the clean parent: cos >= 0.95 with f0",
                "(the same, untied)",
                c.latent_is_clean("untied-nested-inverse", 0, 0),
            ),
        ],
    )
)
