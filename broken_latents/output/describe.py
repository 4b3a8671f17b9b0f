"""Words and numbers shared by the terminal, the reports and the figures: the world in one line,
rates "given the parent", and cosines printed with enough digits to agree with the verdict."""

from __future__ import annotations

from ..analysis.metrics import CLEAN_COS, WorldMetrics

LISTED_FEATURES = 8
"""Worlds up to this many features list every rate and magnitude; bigger ones give ranges."""
LISTED_RELATIONS = 4
"""Hierarchies up to this many parent/child relations are spelled out; bigger ones are counted."""


def cos_text(
    value: float, threshold: float = CLEAN_COS, digits: int = 2, signed: bool = False
) -> str:
    """`value` with `digits` decimals, or more where rounding would carry it across `threshold`: a latent at
    0.9477 is broken at 0.95 and prints 0.948, not 0.95 (nor 0.9496 as 0.950). Compared by |value|."""
    for places in range(digits, 7):
        text = f"{value:+.{places}f}" if signed else f"{value:.{places}f}"
        if (abs(float(text)) >= threshold) == (abs(value) >= threshold):
            break
    return (
        text.replace("-0.", "0.") if float(text) == 0 and not signed else text
    )  # -0.001 prints as 0.00


def parents_of(world: WorldMetrics) -> dict[int, tuple[int, str]]:
    """Child feature -> (its parent, the relation's mode), from the recorded hierarchy."""
    return {
        child: (rel["parent"], rel["mode"])
        for rel in world.hierarchy or []
        for child in rel["children"]
    }


def given_rate_text(world: WorldMetrics, feature: int) -> str:
    """A feature's rate as the config gives it; a conditional child's says it is given its parent."""
    rates = world.given_rates if world.given_rates is not None else world.firing_rates
    parent, mode = parents_of(world).get(feature, (None, ""))
    text = f"{rates[feature]:.3g}"
    return f"{text} given f{parent}" if mode == "conditional" else text


def world_line(world: WorldMetrics) -> str:
    """The world in one line: features, dims, rates as given and as marginal, magnitudes, hierarchy."""
    if "activations" in world.extra:
        return _stored_world_line(world)
    features = len(world.firing_rates)
    head = f"world: {features} features" + (
        f" in {world.dim} dims" if world.dim is not None else ""
    )
    if world.dim is not None:
        head += " (orthogonal)" if world.dim >= features else " (superposition)"
    marginal = [f"{p:.3g}" for p in world.firing_rates]
    given = [given_rate_text(world, i) for i in range(features)]
    given_values = world.given_rates if world.given_rates is not None else world.firing_rates
    parts = [head]
    if given != marginal:
        conditional = sum("given" in text for text in given)
        parts.append(
            f"firing rates as given {_listed(given, given_values)}"
            + (
                f" ({conditional} conditional, given their parent)"
                if len(given) > LISTED_FEATURES
                else ""
            )
        )
        parts.append(f"marginal {_listed(marginal, world.firing_rates)}")
    else:
        parts.append(f"firing rates {_listed(marginal, world.firing_rates)}")
    if world.magnitudes:
        parts.append(
            f"magnitude {_listed([f'{m:.3g}' for m in world.magnitudes], world.magnitudes)}"
        )
    relations = world.hierarchy
    if (
        relations is not None and len(relations) > LISTED_RELATIONS
    ):  # a generated tree: count, do not list
        conditional = sum(rel["mode"] == "conditional" for rel in relations)
        parts.append(
            f"hierarchy: {len(relations)} parents, {conditional} of them with conditional children "
            f"(rates given the parent), {len(relations) - conditional} with forcing children"
        )
    elif relations is not None:  # absent in runs from before it was recorded: unknown, not "none"
        parts.append("hierarchy: " + ("; ".join(map(_relation, relations)) or "none"))
    return "; ".join(parts)


def _stored_world_line(world: WorldMetrics) -> str:
    """A stored-activations world: the file, its split, and the concepts its labels give (if any)."""
    x = world.extra
    parts = [
        f"world: stored activations {x['activations']} ({x['rows']:,} rows x {world.dim} dims; "
        f"{x['train_rows']:,} trained on, {x['eval_rows']:,} held-out rows measured)"
    ]
    if "concepts" in x:
        dropped = x.get("dropped", [])
        source = x.get("direction_source", "class-mean directions")
        if not x.get("labelled", True):  # directions given without labels
            parts.append(
                f"{len(x['concepts'])} directions given as true features; no labels: no hierarchy"
            )
        else:
            parts.append(
                f"{len(x['concepts'])} concepts kept as true features ({source})"
                + (f", {len(dropped)} dropped by their probes" if dropped else ", none dropped")
                + f"; hierarchy from the labels: {len(x.get('edges', []))} parent-child edges"
            )
    else:
        parts.append("no labels or directions: no true features")
    return "; ".join(parts)


def _listed(texts: list[str], values: list[float]) -> str:
    """Every value of a small world; the range of a big one."""
    if len(set(texts)) == 1:
        return texts[0]
    if len(texts) <= LISTED_FEATURES:
        return ", ".join(texts)
    low, high = min(values), max(values)
    return f"{low:.3g}" if low == high else f"{low:.3g} to {high:.3g}"


def _relation(rel: dict) -> str:
    children = ", ".join(f"f{c}" for c in rel["children"])
    if rel["mode"] == "conditional":
        return f"{children} fire only with f{rel['parent']} (conditional: their rates are given the parent)"
    verb = "forces" if len(rel["children"]) == 1 else "force"
    return f"{children} {verb} f{rel['parent']} (a child firing switches the parent on)"
