"""The post's experiments as named, declarative configs with the claims each must show.

EXPERIMENTS is the one registry. Where a claim holds only for some rates, the setting where it
holds is registered, and a `-boundary` twin shows where it stops holding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .claims import (
    Check,
    Claim,
    all_features,
    combo_or_duplicate,
    dec,
    latent_for,
    learns_exactly,
    live_latents,
    matches_all_and_kills_rest,
    top_expected_mse,
    top_variance,
)
from .config import AuxConfig, ExperimentConfig, HierarchyConfig, SAEConfig, TrainConfig, WorldConfig


@dataclass
class Experiment:
    config: ExperimentConfig
    claims: list[Claim] = field(default_factory=list)
    clean_cos: float = 0.95
    """Decoder cosine from which a latent counts as clean (superposition blurs, so it uses less)."""


# The post gives the rates' end (0.3) but not their start. An SAE's decoder bias takes the mean
# of every feature it leaves out, so what a left-out feature costs is its variance p(1-p)m^2,
# not p*m^2. From 0.01 both rankings put 4-8 on top, 6 first and 3 next, as the post says;
# from 0.02 (narrow-independent-boundary) the variance top 5 is 3-7, and that is what SAEs learn.
NARROW_RATES = {"linear": [0.01, 0.3]}
NARROW_MAGNITUDES = {"linear": [20.0, 1.0]}


def narrow_world(*hierarchy: HierarchyConfig, dim: int = 50, rates: dict = NARROW_RATES) -> WorldConfig:
    """20 features ranking 6, 7, 5, 8, 4 by p*m^2 and 6, 5, 7, 4, 8, then 3, by variance."""
    return WorldConfig(features=20, dim=dim, firing=rates, magnitude=NARROW_MAGNITUDES, hierarchy=list(hierarchy))


def recipe(samples: int) -> TrainConfig:
    """The plain experiments' training recipe: Adam at 1e-3 with a cosine decay over the last 20%.
    Over 10 seeds it matched or beat lr 3e-4 without decay on every claim measured (children-repel
    4/10 -> 7/10) in 1.3-1.7x less time; orthogonal init with unit-norm rows did worse (recap 3/10)."""
    return TrainConfig(samples=samples, lr=1e-3, lr_decay="cosine")


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


def one_child_repels(a: int, b: int, at_most: float = -0.1):
    """The weaker form: at least one of the two child latents carries a clear negative part of the other child."""

    def check(runs: dict, world: dict) -> tuple[bool, str]:
        run = runs["tied"]
        cos = dec(run)
        ja, _ = latent_for(run, a)
        jb, _ = latent_for(run, b)
        ok = min(cos[ja, b], cos[jb, a]) <= at_most
        return ok, f"latent {ja} has f{b} {cos[ja, b]:+.3f}; latent {jb} has f{a} {cos[jb, a]:+.3f}"

    return check


def same_reconstruction(a: str, b: str, rel: float = 0.01) -> Check:
    def check(runs: dict, world: dict) -> tuple[bool, str]:
        ma, mb = runs[a]["mse"], runs[b]["mse"]
        return abs(ma - mb) <= rel * max(ma, mb), f"mse {a} {ma:.3f}, {b} {mb:.3f}"

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
        train=recipe(samples),
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
        train=recipe(20_000_000),
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
        train=recipe(20_000_000),
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
        train=recipe(30_000_000),
        # l1 0.03: at 3e-3 the untied L1 is ~0.02 of a loss of ~116 and barely prefers the feature basis.
        sae=[untied(5, l1=0.03), tied(5)],
    ),
    [
        Claim("tied-top5", "tied: clean latents for exactly the 5 features of highest p*m^2 (4-8)",
              "the SAE perfectly reconstructs features 4-8, as we predicted", learns_exactly("tied", top_expected_mse)),
        Claim("untied-top5", "untied: clean latents for exactly the 5 features of highest p*m^2 (4-8)",
              "The untied SAE also perfectly reconstructs the 5 true features", learns_exactly("untied", top_expected_mse)),
        Claim("untied-same-mse", "untied reconstructs as well as tied (MSE within 1%), whatever its basis",
              "The untied SAE also perfectly reconstructs the 5 true features", same_reconstruction("untied", "tied")),
    ],
))

register(Experiment(
    ExperimentConfig(
        name="narrow-independent-boundary",
        description="As narrow-independent with rates from 0.02: SAEs pick the top 5 by variance (3-7), not p*m^2 (4-8)",
        world=narrow_world(rates={"linear": [0.02, 0.3]}),
        train=recipe(30_000_000),
        sae=[tied(5)],
    ),
    [
        Claim("tied-top5-by-variance", "tied: clean latents for exactly the 5 features of highest variance p(1-p)m^2",
              "(boundary of) the SAE will choose to represent the features with the largest expected MSE",
              learns_exactly("tied", top_variance)),
        Claim("tied-not-top5-by-pm2", "tied: the clean latents are not the top 5 by p*m^2 (4-8)",
              "(boundary of) In our toy setup with 5 latents, this corresponds to features 4,5,6,7, and 8",
              lambda runs, world: _not(learns_exactly("tied", top_expected_mse)(runs, world))),
    ],
))


def _not(result: tuple[bool, str]) -> tuple[bool, str]:
    return not result[0], result[1]


register(Experiment(
    ExperimentConfig(
        name="narrow-5-7-force-12",
        description="Features 5 and 7 force 12; tied SAE learns broken latents",
        world=narrow_world(HierarchyConfig(parent=12, children=[5, 7])),
        train=recipe(30_000_000),
        sae=[tied(5)],
    ),
    [
        Claim("children-carry-parent", "the latents for 5 and 7 have decoder cos >= 0.2 with feature 12",
              "Both these latents now include a portion of feature 12", children_carry_parent(12, [5, 7])),
        Claim("children-repel", "the latent for 5 has a negative cos with 7, and vice versa",
              "Features 5 and 7 each also include a negative component of each other", children_repel(5, 7)),
        Claim("one-child-repels", "at least one of the two child latents has cos <= -0.1 with the other child "
              "(the loss is nearly flat along the rotation that would share it)",
              "Features 5 and 7 each also include a negative component of each other", one_child_repels(5, 7)),
        Claim("latents-orthogonal", "all live latents mutually orthogonal (|cos| <= 0.05)",
              "the latents are all already orthogonal", tied_latents_orthogonal()),
        Claim("peaks-mark-broken", "broken latents (best cos < 0.95) show >= 2 activation peaks, clean ones "
              "(best cos >= 0.98) exactly 1", "for latents 0 and 4 which correspond to the broken merged latents, "
              "there are 4 visible peaks", peaks_mark_broken()),
    ],
))


# -- the activation-orthogonality loss and the rest of the post ----------------------------

POST_AUX = AuxConfig(coefficient=10_000.0, threshold_ratio=0.7, window_batches=50,
                     delay_samples=50_000_000, warmup_samples=50_000_000)
POST_AUX_SAMPLES = 150_000_000


def every_live_latent_clean(label: str, clean: float = 0.95, max_cos_with: dict[int, float] | None = None,
                            single_peak: bool = False) -> Check:
    """Check: each live latent matches one feature at >= clean (optionally: small cos with some
    features, and one activation peak)."""

    def check(runs: dict, world: dict) -> tuple[bool, str]:
        run = runs[label]
        cos = dec(run)
        live = live_latents(run)
        best = {j: float(cos[j].max()) for j in live}
        bad = [j for j in live if best[j] < clean]
        for feature, limit in (max_cos_with or {}).items():
            bad += [j for j in live if abs(cos[j, feature]) > limit and j not in bad]
        if single_peak:
            bad += [j for j in live if run["activation_peaks"][j] != 1 and j not in bad]
        learned = sorted(int(cos[j].argmax()) for j in live if best[j] >= clean)
        return not bad and bool(live), f"{label}: learned {learned}; latents failing {sorted(bad)}"

    return check


def learned_set_report(label: str, usual: list[int], clean: float = 0.95) -> Check:
    """Check: the clean latents cover exactly `usual`; the detail says what was learned instead."""

    def check(runs: dict, world: dict) -> tuple[bool, str]:
        got = sorted(m["feature"] for m in runs[label]["matches"] if m["cos"] >= clean)
        swapped_in, left_out = sorted(set(got) - set(usual)), sorted(set(usual) - set(got))
        return got == usual, f"{label} learned {got}" + (f" (in: {swapped_in}, out: {left_out})" if got != usual else "")

    return check


def mixes(label: str, features: list[int], clean: float = 0.95, min_mixing_latents: int = 2, mix_cos: float = 0.3) -> Check:
    """Check: no latent reaches `clean` with any of `features`; at least `min_mixing_latents` latents
    have |cos| >= mix_cos with two or more of them."""

    def check(runs: dict, world: dict) -> tuple[bool, str]:
        cos = dec(runs[label])
        live = live_latents(runs[label])
        clean_hits = [(j, f) for j in live for f in features if cos[j, f] >= clean]
        mixing = [j for j in live if sum(abs(cos[j, f]) >= mix_cos for f in features) >= 2]
        ok = not clean_hits and len(mixing) >= min_mixing_latents
        return ok, f"{label}: clean hits on {features}: {clean_hits}; latents mixing them: {mixing}"

    return check


def learns_outside(label: str, outside_of: list[int], expected: int, clean: float = 0.95) -> Check:
    def check(runs: dict, world: dict) -> tuple[bool, str]:
        got = sorted(m["feature"] for m in runs[label]["matches"] if m["cos"] >= clean and m["feature"] not in outside_of)
        return expected in got, f"{label} clean latents outside {outside_of}: {got}"

    return check


def lacks(label: str, feature: int, clean: float = 0.95) -> Check:
    def check(runs: dict, world: dict) -> tuple[bool, str]:
        best = float(dec(runs[label])[:, feature].max())
        return best < clean, f"{label}: best latent cos with f{feature} is {best:.2f}"

    return check


register(Experiment(
    ExperimentConfig(
        name="narrow-5-7-force-12-aux",
        description="narrow-5-7-force-12 with the activation-orthogonality loss: clean latents again",
        world=narrow_world(HierarchyConfig(parent=12, children=[5, 7])),
        train=TrainConfig(samples=POST_AUX_SAMPLES),
        sae=[tied(5, aux=POST_AUX)],
    ),
    [
        Claim("aux-clean", "every latent matches one feature at >= 0.95, has |cos| <= 0.1 with feature 12 and one "
              "activation peak", "we again perfectly recover true features despite co-occurrence",
              every_live_latent_clean("tied", max_cos_with={12: 0.1}, single_peak=True)),
        Claim("aux-learns-4-8", "the clean latents are features 4-8 (the detail names any feature traded for a neighbour)",
              "(the SAE represents the top 5 by expected MSE)", learned_set_report("tied", [4, 5, 6, 7, 8])),
    ],
))

register(Experiment(
    ExperimentConfig(
        name="narrow-parent-6",
        description="Features 5 and 7 force 6, the feature of highest expected MSE: tied latents merge 5-7",
        world=narrow_world(HierarchyConfig(parent=6, children=[5, 7])),
        train=recipe(30_000_000),
        sae=[tied(5)],
    ),
    [
        Claim("merged-5-6-7", "no latent reaches 0.95 with 5, 6 or 7; at least two latents mix them (|cos| >= 0.3 "
              "with two of them)", "we see merged combinations of latents 5,6, and 7", mixes("tied", [5, 6, 7])),
        Claim("learns-3", "feature 3 (next by expected MSE) gets a clean latent",
              "the SAE is now representing feature 3 as well", learns_outside("tied", [4, 5, 6, 7, 8], 3)),
    ],
))

register(Experiment(
    ExperimentConfig(
        name="narrow-parent-6-aux",
        description="narrow-parent-6 with the activation-orthogonality loss: clean latents, but 6 is dropped",
        world=narrow_world(HierarchyConfig(parent=6, children=[5, 7])),
        train=TrainConfig(samples=POST_AUX_SAMPLES),
        sae=[tied(5, aux=POST_AUX)],
    ),
    [
        Claim("aux-clean", "every live latent matches one feature at >= 0.95",
              "the SAE is now correctly representing true features", every_live_latent_clean("tied")),
        Claim("drops-6", "no latent reaches 0.95 with feature 6", "The SAE no longer represents feature 6 at all",
              lacks("tied", 6)),
    ],
))

register(Experiment(
    ExperimentConfig(
        name="superposition-parent-6",
        description="20 features in 19 dims (|cos| ~0.05), 5 and 7 force 6, l1 1e-2: without and with the aux loss",
        world=narrow_world(HierarchyConfig(parent=6, children=[5, 7]), dim=19),
        train=TrainConfig(samples=POST_AUX_SAMPLES),
        sae=[tied(5, l1=1e-2), tied(5, l1=1e-2, aux=POST_AUX, label="tied-aux")],
    ),
    [
        Claim("plain-3-4-8-clean", "without aux: features 3, 4 and 8 clean (cos >= 0.9)",
              "features 3, 4, and 8 are clearly tracked", lambda runs, world: _clean_includes(runs, "tied", [3, 4, 8])),
        Claim("plain-5-7-mixed", "without aux: no latent reaches 0.9 with 5, 6 or 7; two latents mix them",
              "features 5, 6, and 7 are mixed together", mixes("tied", [5, 6, 7], clean=0.9)),
        Claim("aux-clean-without-6", "with aux: features 3, 4, 5, 7, 8 clean (cos >= 0.9) and 6 absent",
              "The SAE learns clean latents for features 3,4,5,7 and 8, but not feature 6",
              learned_set_report("tied-aux", [3, 4, 5, 7, 8], clean=0.9)),
    ],
    clean_cos=0.9,
))


def _clean_includes(runs: dict, label: str, features: list[int], clean: float = 0.9) -> tuple[bool, str]:
    got = sorted(m["feature"] for m in runs[label]["matches"] if m["cos"] >= clean)
    return set(features) <= set(got), f"{label} clean at >= {clean}: {got}"


def single_latent_merges(label: str) -> Check:
    def check(runs: dict, world: dict) -> tuple[bool, str]:
        cos = dec(runs[label])[0]
        ok = int(np.argmax(cos)) == 0 and cos[1] >= 0.3 and cos[2] >= 0.3 and abs(cos[3]) <= 0.1
        return ok, f"{label} latent cos with f0..f3: " + ", ".join(f"{c:+.2f}" for c in cos)

    return check


def encoder_profile_matches_decoder(runs: dict, world: dict) -> tuple[bool, str]:
    run = runs["untied"]
    enc, dec_ = np.asarray(run["encoder_cos"][0]), np.asarray(run["decoder_cos"][0])
    profile_cos = float(enc @ dec_ / (np.linalg.norm(enc) * np.linalg.norm(dec_) + 1e-12))
    span_share = float(np.linalg.norm(enc))  # the encoder row's share inside the features' span
    return profile_cos >= 0.9, (f"cos(encoder profile, decoder profile) {profile_cos:.3f}; "
                                f"encoder row's norm share in the features' span {span_share:.2f}")


register(Experiment(
    ExperimentConfig(
        name="single-latent",
        description="Parent 0 with conditional children 1, 2; one latent merges parent and children",
        world=WorldConfig(features=4, dim=20, firing=[0.3, 0.4, 0.4, 0.2], magnitude=1.0,
                          hierarchy=[HierarchyConfig(parent=0, children=[1, 2], mode="conditional")]),
        train=recipe(20_000_000),
        sae=[untied(1), tied(1)],
    ),
    [
        Claim("untied-merges", "untied: the latent's cos is highest with f0, >= 0.3 with f1 and f2, |cos| <= 0.1 with f3",
              "it also merges in the child features 1 and 2. Feature 3 ... is fully excluded",
              single_latent_merges("untied")),
        Claim("tied-merges", "tied: the same profile", "The tied SAE learns a nearly identical representation",
              single_latent_merges("tied")),
        Claim("encoder-like-decoder", "untied: the encoder's cosine profile over the features matches the decoder's "
              "(cos >= 0.9)", "the encoder of the untied SAE is nearly identical to the decoder",
              encoder_profile_matches_decoder),
    ],
))


def get(name: str) -> Experiment:
    return EXPERIMENTS[name]
