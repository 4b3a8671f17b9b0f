"""Checks: functions over one seed's metrics that decide a claim, with the numbers that decided it.

A check takes `runs` (label -> that SAE's `RunMetrics` for one seed) and `world` (the run's
`WorldMetrics`) and returns (holds, detail). Builders (`learns_exactly("tied", ...)`) return checks.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..analysis.metrics import CLEAN_COS, RunMetrics, WorldMetrics

Runs = dict[str, RunMetrics]
"""One seed's runs by SAE label."""
Check = Callable[[Runs, WorldMetrics], "tuple[bool, str]"]


def dec(run: RunMetrics) -> np.ndarray:
    return np.asarray(run.decoder_cos)


def live_latents(run: RunMetrics) -> list[int]:
    return [j for j in range(len(run.decoder_cos)) if j not in run.dead_latents]


def latent_for(run: RunMetrics, feature: int) -> tuple[int, float]:
    """The live latent whose decoder is closest to `feature`, and that cosine."""
    cos = dec(run)[:, feature]
    live = live_latents(run)
    j = max(live, key=lambda k: cos[k])
    return j, float(cos[j])


def clean_features(run: RunMetrics, clean: float) -> list[int]:
    """The features matched by a latent at decoder cos >= clean, sorted."""
    return sorted(m.feature for m in run.matches if m.cos >= clean)


def learns_exactly(
    label: str,
    features_from_world: Callable[[WorldMetrics, int], list[int]],
    clean: float = CLEAN_COS,
) -> Check:
    """Check: the SAE's clean latents cover exactly the given features (each matched at >= clean)."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        want = sorted(features_from_world(world, len(run.decoder_cos)))
        got = clean_features(run, clean)
        return got == want, f"{label} learned {got}, expected {want}"

    return check


def top_expected_mse(world: WorldMetrics, latents: int) -> list[int]:
    return world.expected_mse_ranking[:latents]


def top_variance(world: WorldMetrics, latents: int) -> list[int]:
    return world.variance_ranking[:latents]


def all_features(world: WorldMetrics, latents: int) -> list[int]:
    return list(range(len(world.expected_mse)))


def matches_all_and_kills_rest(label: str, clean: float = CLEAN_COS) -> Check:
    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        n_features = len(world.expected_mse)
        learned = clean_features(run, clean)
        spare = len(run.decoder_cos) - n_features
        dead = len(run.dead_latents)
        ok = learned == list(range(n_features)) and dead == spare
        return (
            ok,
            f"{label} learned {learned} of {n_features}; dead {dead} of {spare} spare latents",
        )

    return check


def combo_or_duplicate(
    label: str, combo_cos: float = 0.5, duplicate_cos: float = CLEAN_COS
) -> Check:
    """Check: some live latent mixes two features (cos >= combo_cos with both), or two latents duplicate one feature."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        cos = dec(run)
        live = live_latents(run)
        combos = [(j, [int(i) for i in np.flatnonzero(cos[j] >= combo_cos)]) for j in live]
        combos = [(j, fs) for j, fs in combos if len(fs) >= 2]
        dupes = [
            i for i in range(cos.shape[1]) if sum(cos[j, i] >= duplicate_cos for j in live) >= 2
        ]
        parts = [
            f"combo latents {combos}" if combos else "no combo latent",
            f"duplicated features {dupes}" if dupes else "no duplicate",
        ]
        return bool(combos or dupes), f"{label}: " + ", ".join(parts)

    return check


def absorbs(label: str, parent: int, child: int) -> Check:
    """Check (recap): the child latent decodes parent + child; the parent latent's encoder is negative on the child."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        cos = dec(run)
        combo = max(live_latents(run), key=lambda j: min(cos[j, parent], cos[j, child]))
        parent_latent = max(
            (j for j in live_latents(run) if j != combo), key=lambda j: cos[j, parent]
        )
        enc_parent_child = run.encoder_cos[parent_latent][child]
        ok = cos[combo, parent] >= 0.5 and cos[combo, child] >= 0.5 and enc_parent_child < 0
        return ok, (
            f"latent {combo} decodes f{parent} {cos[combo, parent]:.2f}, f{child} {cos[combo, child]:.2f}; "
            f"parent latent {parent_latent} encoder cos with f{child} {enc_parent_child:.2f}"
        )

    return check


def rotates_pair(label: str, a: int, b: int) -> Check:
    """Check (boundary): features a and b come out as the 45-degree pair (fa +- fb)/sqrt 2 instead of themselves."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        cos = dec(run)
        rotated = [j for j in live_latents(run) if abs(cos[j, a]) >= 0.5 and abs(cos[j, b]) >= 0.5]
        return len(rotated) >= 2, f"latents mixing f{a} and f{b} at |cos| >= 0.5: {rotated}"

    return check


def children_carry_parent(
    label: str, parent: int, children: list[int], min_cos: float = 0.2
) -> Check:
    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        cos = dec(run)
        found = [(c, *latent_for(run, c)) for c in children]
        ok = all(cos[j, parent] >= min_cos for _, j, _ in found)
        return ok, ", ".join(
            f"latent {j} (f{c} {cc:.2f}) has f{parent} {cos[j, parent]:+.2f}" for c, j, cc in found
        )

    return check


def children_repel(label: str, a: int, b: int) -> Check:
    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        cos = dec(run)
        ja, _ = latent_for(run, a)
        jb, _ = latent_for(run, b)
        ok = cos[ja, b] < 0 and cos[jb, a] < 0
        return ok, f"latent {ja} has f{b} {cos[ja, b]:+.3f}; latent {jb} has f{a} {cos[jb, a]:+.3f}"

    return check


def one_child_repels(label: str, a: int, b: int, at_most: float = -0.1) -> Check:
    """The weaker form: at least one of the two child latents carries a clear negative part of the other child."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        cos = dec(run)
        ja, _ = latent_for(run, a)
        jb, _ = latent_for(run, b)
        ok = min(cos[ja, b], cos[jb, a]) <= at_most
        return ok, f"latent {ja} has f{b} {cos[ja, b]:+.3f}; latent {jb} has f{a} {cos[jb, a]:+.3f}"

    return check


def same_reconstruction(a: str, b: str, rel: float = 0.01) -> Check:
    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        ma, mb = runs[a].mse, runs[b].mse
        return abs(ma - mb) <= rel * max(ma, mb), f"mse {a} {ma:.3f}, {b} {mb:.3f}"

    return check


def latents_orthogonal(label: str, max_abs: float = 0.05) -> Check:
    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        live = live_latents(run)
        lc = np.abs(np.asarray(run.latent_cos)[np.ix_(live, live)] - np.eye(len(live)))
        worst = float(lc.max()) if len(live) > 1 else 0.0
        return worst <= max_abs, f"max |cos| between live latents {worst:.3f}"

    return check


def peaks_mark_broken(label: str, clean: float = 0.98) -> Check:
    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        best = dec(run).max(axis=1)
        peaks = run.activation_peaks
        live = live_latents(run)
        broken = [j for j in live if best[j] < CLEAN_COS]
        clean_ones = [j for j in live if best[j] >= clean]
        ok = (
            bool(broken)
            and all(peaks[j] >= 2 for j in broken)
            and all(peaks[j] == 1 for j in clean_ones)
        )
        return ok, (
            f"broken {[(j, peaks[j]) for j in broken]} (latent, peaks); "
            f"clean {[(j, peaks[j]) for j in clean_ones]}"
        )

    return check


def every_live_latent_clean(
    label: str,
    clean: float = CLEAN_COS,
    max_cos_with: dict[int, float] | None = None,
    single_peak: bool = False,
) -> Check:
    """Check: each live latent matches one feature at >= clean (optionally: small cos with some
    features, and one activation peak)."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        cos = dec(run)
        live = live_latents(run)
        best = {j: float(cos[j].max()) for j in live}
        bad = [j for j in live if best[j] < clean]
        for feature, limit in (max_cos_with or {}).items():
            bad += [j for j in live if abs(cos[j, feature]) > limit and j not in bad]
        if single_peak:
            bad += [j for j in live if run.activation_peaks[j] != 1 and j not in bad]
        learned = sorted(int(cos[j].argmax()) for j in live if best[j] >= clean)
        return not bad and bool(live), f"{label}: learned {learned}; latents failing {sorted(bad)}"

    return check


def learned_set_report(label: str, usual: list[int], clean: float = CLEAN_COS) -> Check:
    """Check: the clean latents cover exactly `usual`; the detail says what was learned instead."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        got = clean_features(runs[label], clean)
        swapped_in, left_out = sorted(set(got) - set(usual)), sorted(set(usual) - set(got))
        return got == usual, f"{label} learned {got}" + (
            f" (in: {swapped_in}, out: {left_out})" if got != usual else ""
        )

    return check


def mixes(
    label: str,
    features: list[int],
    clean: float = CLEAN_COS,
    min_mixing_latents: int = 2,
    mix_cos: float = 0.3,
) -> Check:
    """Check: no latent reaches `clean` with any of `features`; at least `min_mixing_latents` latents
    have |cos| >= mix_cos with two or more of them."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        cos = dec(runs[label])
        live = live_latents(runs[label])
        clean_hits = [(j, f) for j in live for f in features if cos[j, f] >= clean]
        mixing = [j for j in live if sum(abs(cos[j, f]) >= mix_cos for f in features) >= 2]
        ok = not clean_hits and len(mixing) >= min_mixing_latents
        return ok, f"{label}: clean hits on {features}: {clean_hits}; latents mixing them: {mixing}"

    return check


def learns_outside(
    label: str, outside_of: list[int], expected: int, clean: float = CLEAN_COS
) -> Check:
    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        got = [f for f in clean_features(runs[label], clean) if f not in outside_of]
        return expected in got, f"{label} clean latents outside {outside_of}: {got}"

    return check


def lacks(label: str, feature: int, clean: float = CLEAN_COS) -> Check:
    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        best = float(dec(runs[label])[:, feature].max())
        return best < clean, f"{label}: best latent cos with f{feature} is {best:.2f}"

    return check


def single_latent_merges(label: str) -> Check:
    """Check, up to the latent's sign: |cos| highest with f0, >= 0.3 with f1 and f2, <= 0.1 with f3."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        cos = dec(runs[label])[0]
        size = np.abs(cos)
        ok = int(np.argmax(size)) == 0 and size[1] >= 0.3 and size[2] >= 0.3 and size[3] <= 0.1
        return ok, f"{label} latent cos with f0..f3: " + ", ".join(f"{c:+.2f}" for c in cos)

    return check


def points_at(label: str, feature: int) -> Check:
    """Check: the first latent's decoder has a positive cosine with `feature` (it fires with it,
    not in its absence)."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        cos = float(dec(runs[label])[0, feature])
        return cos > 0, f"{label} latent cos with f{feature}: {cos:+.2f}"

    return check


def single_latent_is_feature(label: str, feature: int, clean: float = CLEAN_COS) -> Check:
    """Check: the first latent's decoder has cos >= clean with `feature` (the clean parent, not the
    merged latent); the detail gives its whole cosine profile."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        profile = dec(runs[label])[0]
        shown = ", ".join(f"f{i} {v:+.2f}" for i, v in enumerate(profile))
        return float(profile[feature]) >= clean, f"{label} latent cos: {shown}"

    return check


def clean_unless_opposite(label: str, feature: int, clean: float = CLEAN_COS) -> Check:
    """Check: the first latent is the clean `feature` (cos >= clean) or points against it (cos < 0:
    the local minimum that fires when the feature is absent, which a technique on peaks cannot reach)."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        cos = float(dec(runs[label])[0, feature])
        where = "clean" if cos >= clean else "opposite sign" if cos < 0 else "neither"
        return cos >= clean or cos < 0, f"{label} latent cos with f{feature}: {cos:+.2f} ({where})"

    return check


def encoder_profile_matches_decoder(label: str, latent: int) -> Check:
    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        run = runs[label]
        enc, dec_ = np.asarray(run.encoder_cos[latent]), np.asarray(run.decoder_cos[latent])
        profile_cos = float(enc @ dec_ / (np.linalg.norm(enc) * np.linalg.norm(dec_) + 1e-12))
        span_share = float(np.linalg.norm(enc))  # the encoder row's share inside the features' span
        return profile_cos >= 0.9, (
            f"cos(encoder profile, decoder profile) {profile_cos:.3f}; "
            f"encoder row's norm share in the features' span {span_share:.2f}"
        )

    return check


def negated(check: Check) -> Check:
    """The opposite statement, with the same detail."""

    def opposite(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        ok, detail = check(runs, world)
        return not ok, detail

    return opposite


def clean_includes(label: str, features: list[int], clean: float = 0.9) -> Check:
    """Check: each of `features` has a clean latent (others may too)."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        got = clean_features(runs[label], clean)
        return set(features) <= set(got), f"{label} clean at >= {clean}: {got}"

    return check


def latent_is_clean(label: str, latent: int, feature: int, clean: float = CLEAN_COS) -> Check:
    """Check: `latent`'s decoder has cos >= clean with `feature` (e.g. a Matryoshka prefix latent
    that learned its parent alone)."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        cos = dec(runs[label])[latent]
        return bool(cos[feature] >= clean), f"{label} latent {latent} cos with f0..: " + ", ".join(
            f"{v:+.2f}" for v in cos[:8]
        )

    return check


def prefix_hedges(label: str, parent: int, children: list[int], at_least: float) -> Check:
    """Check: latent 0 (a Matryoshka SAE's width-1 prefix) carries the children of the parent it
    points at: sum of cos(W_0, f_child), taken in the direction of its f_parent component (a latent
    along -f_parent that fires when the parent is absent counts the same way), >= at_least."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        cos = dec(runs[label])[0]
        sign = 1.0 if cos[parent] >= 0 else -1.0
        value = float(sign * cos[children].sum())
        return value >= at_least, (
            f"{label} latent 0: f{parent} {cos[parent]:+.2f}, children "
            + ", ".join(f"f{c} {cos[c]:+.2f}" for c in children)
            + f"; hedging {value:+.2f}"
        )

    return check


def latent_is_one_of(
    label: str, latent: int, features: list[int], clean: float = CLEAN_COS
) -> Check:
    """Check: `latent`'s decoder has |cos| >= clean with one of `features` (either sign); the detail
    names which, with its sign."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        cos = dec(runs[label])[latent]
        best = int(np.argmax(np.abs(cos)))
        return bool(
            best in features and abs(cos[best]) >= clean
        ), f"{label} latent {latent} is {cos[best]:+.2f} f{best}"

    return check


Measure = Callable[[RunMetrics], float]
"""A number of one SAE's metrics (its F1, its mean absorption gap, ...), for the comparisons below."""


def compares(a: str, b: str, name: str, value: Measure, at_least: float) -> Check:
    """Check: value(a) - value(b) >= at_least (a negative `at_least`: a may fall that far below b);
    the detail gives both values."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        va, vb = value(runs[a]), value(runs[b])
        return va - vb >= at_least, f"{name} {a} {va:.4f}, {b} {vb:.4f} (difference {va - vb:+.4f})"

    return check


def within(a: str, b: str, name: str, value: Measure, tolerance: float) -> Check:
    """Check: |value(a) - value(b)| <= tolerance: the two SAEs do not differ by more."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        va, vb = value(runs[a]), value(runs[b])
        return abs(
            va - vb
        ) <= tolerance, f"{name} {a} {va:.4f}, {b} {vb:.4f} (difference {va - vb:+.4f})"

    return check


def bounded(labels: list[str], name: str, value: Measure, low: float, high: float) -> Check:
    """Check: low <= value(label) <= high for every label."""

    def check(runs: Runs, world: WorldMetrics) -> tuple[bool, str]:
        values = {label: value(runs[label]) for label in labels}
        return all(low <= v <= high for v in values.values()), f"{name} " + ", ".join(
            f"{label} {v:.4f}" for label, v in values.items()
        )

    return check
