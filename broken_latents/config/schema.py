"""Typed experiment configs: one dataclass per TOML table, validated on construction.

Every error is a `ConfigError` naming the dotted field and what is allowed, so the CLI can
print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Union

from . import laws
from .convert import OneOf, Unchecked, structure
from .errors import ConfigError as ConfigError  # re-exported: where the package imports it from
from .errors import require
from .errors import require as _require  # noqa: F401 - re-exported for language/config.py
from .laws import resolve_spec as resolve_spec  # re-exported
from .laws import short_list

# A per-feature quantity: one number for all, a list with one value per feature,
# or {linear = [start, stop]} spread evenly from the first feature to the last. Checked as a whole
# by WorldConfig (config/laws.py), whose message names all three forms.
Spec = Annotated[Union[float, list, dict], Unchecked()]


def registered_architectures() -> tuple[str, ...]:
    from ..saes import ARCHITECTURES  # the SAEs register themselves on import

    return tuple(ARCHITECTURES)


def architecture_options(name: str) -> type:
    """The dataclass of the fields architecture `name` owns (empty when it owns none)."""
    from ..saes import ARCHITECTURES

    return ARCHITECTURES[name].Options


K_ACTIVATIONS = ("topk", "batchtopk")
"""Activations that keep a number `k` of latents."""

RESERVED_LABELS = ("samples",)
"""SAE labels refused: "samples" sits beside the labels in records keyed by label (the step
count of a logged step); a label of digits alone would read as an index in `--set sae.N.key`."""

Engine = Literal["auto", "autograd", "arrays", "compiled"]

SPARSE_FROM = 1024
"""Worlds with this many features or more sample sparsely (see `WorldConfig.sparse`)."""


@dataclass
class HierarchyConfig:
    parent: int
    """Index of the parent feature."""
    children: list[int]
    """Indices of the child features; each co-occurs with the parent."""
    mode: Literal["force", "conditional"] = "force"
    """force: a child fires at its own rate and switches the parent on.
    conditional: a child fires only while its parent fires, at its rate given the parent."""


@dataclass
class TreeConfig:
    """A generated hierarchy, as SAELens' `HierarchyConfig` builds it (so worlds compare with
    SynthSAEBench): `roots` trees laid out breadth-first over features 0, 1, ...; a child fires only
    while its parent is active (at its own rate, compensated if asked)."""

    roots: int = 128
    """Number of trees; their roots are features 0 .. roots - 1."""
    branching: int = 4
    """Children of every node above the leaves (at least 2)."""
    depth: int = 3
    """Levels below the roots: depth 1 = roots with leaf children."""
    mutually_exclusive: float = 0.0
    """Share (0 to 1) of the parents at depth >= mutually_exclusive_min_depth whose children exclude each
    other: when several fire, one chosen uniformly at random keeps firing."""
    mutually_exclusive_min_depth: int = 0
    """Shallowest parent depth (roots: 0) whose children may be mutually exclusive."""
    compensate_probabilities: bool = False
    """Raise each child's own rate by 1 / (its parent's rate) and, in a mutually exclusive group, by
    1 + (its siblings' rates summed) / (parent's rate), capped at 1, so that its marginal rate stays near
    the firing law's value (SAELens' correction)."""
    scale_children_by_parent: bool = False
    """A child's magnitude is multiplied by (its parent's magnitude / the parent's mean magnitude)."""

    def __post_init__(self) -> None:
        require(self.roots >= 1, "world.tree.roots", f"must be >= 1, got {self.roots}")
        require(self.branching >= 2, "world.tree.branching", f"must be >= 2, got {self.branching}")
        require(self.depth >= 1, "world.tree.depth", f"must be >= 1, got {self.depth}")
        require(
            0.0 <= self.mutually_exclusive <= 1.0,
            "world.tree.mutually_exclusive",
            f"must lie in [0, 1], got {self.mutually_exclusive}",
        )
        require(
            self.mutually_exclusive_min_depth >= 0,
            "world.tree.mutually_exclusive_min_depth",
            f"must be >= 0, got {self.mutually_exclusive_min_depth}",
        )


@dataclass
class CorrelationConfig:
    """Low-rank correlation of the firing decisions through a Gaussian copula (SAELens'
    `LowRankCorrelationConfig`): feature i fires where g_i = L_i . e + sqrt(d_i) eta_i exceeds the
    normal quantile of its rate, with e ~ N(0, I_rank), L ~ scale N(0, 1) [features, rank] and
    d_i = 1 - |L_i|^2 (rows with d_i < 0.01 are shrunk), so each feature keeps its rate."""

    rank: int = 25
    """Rank of the correlation's low-rank factor."""
    scale: float = 0.1
    """Standard deviation of the factor's entries; each row's squared norm is about rank x scale^2."""

    def __post_init__(self) -> None:
        require(self.rank >= 1, "world.correlation.rank", f"must be >= 1, got {self.rank}")
        require(
            math.isfinite(self.scale) and self.scale >= 0,
            "world.correlation.scale",
            f"must be a finite number >= 0, got {self.scale}",
        )


@dataclass
class WorldConfig:
    features: int = 20
    """Number of true features."""
    dim: int = 50
    """Dimension of the input space; dim < features puts the features in superposition."""
    firing: Spec = 0.2
    """Firing probability: a number, a list (one per feature), {linear = [start, stop]},
    {zipf = {exponent, max, min}} (SAELens' Zipfian law) or {random = {min, max}} (uniform, seeded by `seed`)."""
    magnitude: Spec = 1.0
    """Activation magnitude when a feature fires: a number, a list or {linear = [start, stop]}."""
    magnitude_std: Spec = 0.0
    """Noise of the magnitude: each firing draws N(magnitude, magnitude_std^2), clipped at 0, so
    activation peaks overlap as in real models: a number, a list, {linear = [start, stop]} or
    {folded_normal = {mean, std}} (each feature's std drawn as |N(mean, std^2)|, seeded). 0 = exact magnitudes."""
    seed: int = 0
    """Seed of the feature directions (the data stream is seeded by the training seed)."""
    hierarchy: list[HierarchyConfig] = field(default_factory=list)
    """Parent/child co-occurrence relations."""
    tree: TreeConfig | None = None
    """[world.tree]: a generated hierarchy over features 0, 1, ... (SAELens' semantics), beside or instead
    of the explicit [[world.hierarchy]] (whose features must then lie outside the trees)."""
    correlation: CorrelationConfig | None = None
    """[world.correlation]: low-rank correlation of the firing decisions (Gaussian copula); absent: independent."""
    bias: float = 0.0
    """Norm of a fixed input bias added to every input (its direction drawn from `seed`); 0 = none."""
    load: str | None = None
    """A folder written by SAELens' `SyntheticModel.save()`: the world is read from it (directions, rates,
    magnitude laws, hierarchy, correlation, bias); then no other world key may be set (features and dim
    may be, if they equal the folder's)."""
    activations: str | None = None
    """SAEs on stored activations: a `.npy` (memory-mapped) or `.safetensors` file of shape [N, D],
    float32 or float16, instead of a sampled world (features, dim, firing, ... are then unused; D comes
    from the file). Relative paths are read from the working directory."""
    activations_key: str | None = None
    """The tensor's name in a `.safetensors` activations file (needed when it holds several)."""
    labels: str | None = None
    """Optional `.npy` [N, C] of concept indicators (nonzero = active) for the activations' rows: the
    probe-based truth. Each concept's direction is what it adds beyond its parent on the training rows
    (its class mean minus the mean where its parent is active without it; a root: where it is inactive);
    a concept a linear probe cannot tell apart (accuracy or balanced accuracy < 0.95) is dropped."""
    directions: str | None = None
    """Optional `.npy` [C, D] of per-concept directions (the true features) instead of those from `labels`;
    with `labels` too, row c of the directions is column c of the labels."""
    held_out: float = 0.1
    """Share of the activations' rows (the last ones) kept out of training and used for the metrics."""

    def __post_init__(self) -> None:
        # the declared laws made concrete (config/laws.py): validated here, before any run
        require(
            0.0 < self.held_out < 1.0, "world.held_out", f"must lie in (0, 1), got {self.held_out}"
        )
        for name in ("activations_key", "labels", "directions"):
            require(
                getattr(self, name) is None or self.activations is not None,
                f"world.{name}",
                "applies to stored activations only; set world.activations too",
            )

        if self.load is not None:
            self._check_load()
        require(self.features >= 1, "world.features", f"must be >= 1, got {self.features}")
        require(self.dim >= 1, "world.dim", f"must be >= 1, got {self.dim}")
        require(
            math.isfinite(self.bias) and self.bias >= 0,
            "world.bias",
            f"must be a finite number >= 0, got {self.bias}",
        )
        if self.load is not None:
            return
        rates = laws.base_rates(self)
        require(
            all(0.0 <= r <= 1.0 for r in rates),
            "world.firing",
            f"rates must lie in [0, 1], got {short_list(rates)}",
        )
        mags = laws.magnitude_means(self)
        require(
            all(m > 0 for m in mags),
            "world.magnitude",
            f"magnitudes must be > 0, got {short_list(mags)}",
        )
        stds = laws.magnitude_stds(self)
        require(
            all(math.isfinite(v) and v >= 0 for v in stds),
            "world.magnitude_std",
            f"standard deviations must be finite and >= 0, got {short_list(stds)}",
        )
        if self.tree is not None:
            laws.check_tree(self)
        seen_children: set[int] = set()
        for i, rel in enumerate(self.hierarchy):
            where = f"world.hierarchy.{i}"
            for idx, name in [(rel.parent, "parent"), *[(c, "children") for c in rel.children]]:
                require(
                    0 <= idx < self.features,
                    f"{where}.{name}",
                    f"feature index must lie in [0, {self.features - 1}], got {idx}",
                )
            require(len(rel.children) > 0, f"{where}.children", "needs at least one child")
            require(
                rel.parent not in rel.children,
                f"{where}.children",
                "a feature cannot be its own child",
            )
            again = seen_children.intersection(rel.children)
            require(
                not again, f"{where}.children", f"features {sorted(again)} already have a parent"
            )
            seen_children.update(rel.children)
        # Nested levels are fine, cycles are not: walk up from every feature.
        parent_of = {c: rel.parent for rel in self.hierarchy for c in rel.children}
        for start in parent_of:
            node, steps = start, 0
            while node in parent_of:
                node, steps = parent_of[node], steps + 1
                require(steps <= self.features, "world.hierarchy", f"cycle through feature {start}")

    @property
    def lawful(self) -> bool:
        """Uses a law only the sparse sampler (and the dense reference `World.sample`) implements:
        a tree, correlation, a bias, or a world loaded from SAELens."""
        return (
            self.tree is not None
            or self.correlation is not None
            or self.bias > 0
            or self.load is not None
        )

    @property
    def sparse(self) -> bool:
        """The world samples as lists of the features that fire (world/sparse.py) and trains on
        inputs x: chosen for worlds with SPARSE_FROM features or more, where feature space costs
        more than input space (and the dense sampler draws bits for every feature), and for every
        world with a new law. A fact of the config, so the checks before a run read it unbuilt."""
        return self.lawful or self.features >= SPARSE_FROM

    @property
    def on_inputs(self) -> bool:
        """The engines train on the inputs x, not in feature space: a sparse world, or stored
        activations (which have no features). `training.engines.choose_engine` reads it for both."""
        return self.sparse or self.activations is not None

    def _check_load(self) -> None:
        """With `load`, only features and dim may be set (they must equal the folder's), the rest
        stays default; features and dim are then read from the folder."""
        saved = laws.read_config(self.load)
        defaults = {f.name: f for f in dataclasses.fields(self)}
        for f in dataclasses.fields(self):
            if f.name in ("load", "features", "dim"):
                continue
            default = f.default_factory() if callable(f.default_factory) else f.default
            require(
                getattr(self, f.name) == default,
                f"world.{f.name}",
                f"cannot be set with world.load (the world comes whole from {self.load}); remove it or world.load",
            )
        for name, key in (("features", "num_features"), ("dim", "hidden_dim")):
            value = getattr(self, name)
            if value != defaults[name].default:
                require(
                    value == saved[key],
                    f"world.{name}",
                    f"is {saved[key]} in {self.load}; remove world.{name} or set it to {saved[key]}, got {value}",
                )
        self.features, self.dim = int(saved["num_features"]), int(saved["hidden_dim"])


@dataclass
class TrainConfig:
    samples: int = 30_000_000
    """Training samples per SAE."""
    batch_size: int = 1024
    """Samples per optimiser step."""
    lr: float = 3e-4
    """Adam learning rate."""
    seeds: int = 3
    """Independent seeds; each seed has its own data stream and SAE initialisations."""
    first_seed: int = 0
    """Seeds run: first_seed, ..., first_seed + seeds - 1. Seed s trains the same SAEs in any run,
    so a run with first_seed = 5 adds seeds 5-9 to an earlier 5-seed run."""
    init: Literal["random", "orthogonal"] = "random"
    """Decoder init: random unit-norm rows, or orthonormal rows (as far as dim allows)."""
    unit_norm_decoder: bool = False
    """Renormalise decoder rows to unit norm after every step."""
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    """Learning-rate schedule over the last `lr_decay_fraction` of training."""
    lr_decay_fraction: float = 0.2
    """Fraction of training, at the end, over which the learning rate decays to 0."""
    engine: Engine = "auto"
    """auto: hand-derived gradients where every SAE declares them (compiled on the CPU, arrays on a
    GPU), else autograd; on a sparse world, the sparse-latent gradients on inputs x (autograd for the SAEs
    they do not cover). autograd: the plain reference (slower, same math). arrays: the hand-derived
    gradients as torch array code (the GPU's engine). compiled: the same as one numba kernel (CPU only)."""
    eval_samples: int = 200_000
    """Samples drawn (from a held-out stream) to compute the metrics after training."""

    value_aliases: ClassVar[dict[str, dict[str, str]]] = {"engine": {"fast": "auto"}}
    """Old values that config files may still hold, and what they mean now."""

    def __post_init__(self) -> None:
        require(self.samples >= 1, "train.samples", f"must be >= 1, got {self.samples}")
        require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        require(
            math.isfinite(self.lr) and self.lr > 0,
            "train.lr",
            f"must be a positive number, got {self.lr}",
        )
        require(self.seeds >= 1, "train.seeds", f"must be >= 1, got {self.seeds}")
        require(self.first_seed >= 0, "train.first_seed", f"must be >= 0, got {self.first_seed}")
        require(
            0.0 <= self.lr_decay_fraction <= 1.0,
            "train.lr_decay_fraction",
            f"must lie in [0, 1], got {self.lr_decay_fraction}",
        )
        require(
            self.eval_samples >= 1000,
            "train.eval_samples",
            f"must be >= 1000, got {self.eval_samples}",
        )


@dataclass
class AuxConfig:
    """Activation-orthogonality loss: penalise cos(x - b, W_j)^2 wherever latent j fires below tau_j."""

    coefficient: float = 10_000.0
    """lambda, reached at the end of the warm-up."""
    threshold_ratio: float = 0.7
    """tau_j = threshold_ratio * (max activation of latent j over the last window_batches batches)."""
    window_batches: int = 50
    """Batches over which the running max is kept."""
    delay_samples: int = 50_000_000
    """Samples trained with lambda = tau = 0 before the warm-up starts."""
    warmup_samples: int = 50_000_000
    """Samples over which lambda and tau rise linearly to their full values."""
    threshold: Literal["ratio", "mixture"] = "ratio"
    """ratio: the post's tau_j = threshold_ratio x running max. mixture: tau_j from latent j's peak model
    (a Gaussian mixture refitted every refit_samples, see `training/refit.py`): between its main peak and the peak
    below; for one peak, 3 stds (at least 15% of the mean) below it. Both rise over the same warm-up;
    a latent without a model (too few firings) falls back to the ratio rule."""
    refit_samples: int = 5_000_000
    """mixture: training samples between refits of the peak models (the first fit comes after the delay)."""
    refit_inputs: int = 4096
    """mixture: inputs drawn from a held-out stream for each refit."""

    def __post_init__(self) -> None:
        require(self.coefficient >= 0, "aux.coefficient", f"must be >= 0, got {self.coefficient}")
        require(
            0 < self.threshold_ratio <= 1,
            "aux.threshold_ratio",
            f"must lie in (0, 1], got {self.threshold_ratio}",
        )
        require(
            self.window_batches >= 1,
            "aux.window_batches",
            f"must be >= 1, got {self.window_batches}",
        )
        require(
            self.delay_samples >= 0, "aux.delay_samples", f"must be >= 0, got {self.delay_samples}"
        )
        require(
            self.warmup_samples >= 0,
            "aux.warmup_samples",
            f"must be >= 0, got {self.warmup_samples}",
        )
        require(
            self.threshold in ("ratio", "mixture"),
            "aux.threshold",
            f"must be one of 'ratio', 'mixture'; got {self.threshold!r}",
        )
        require(
            self.refit_samples >= 1, "aux.refit_samples", f"must be >= 1, got {self.refit_samples}"
        )
        require(
            self.refit_inputs >= 256, "aux.refit_inputs", f"must be >= 256, got {self.refit_inputs}"
        )


@dataclass
class InverseConfig:
    """The inverse technique for narrow SAEs (the post's future work): penalise the alignment of each
    latent's decoder row with the directions that separate its higher activation peaks from its lowest
    (main) one, L = coefficient * mean_j sum_p cos(W_j, u_jp)^2, with u_jp refitted from the latent's
    peak model every refit_samples (see `training/refit.py`)."""

    coefficient: float = 10.0
    """Weight of the penalty at the end of the warm-up (cos^2 is at most 1 per latent and direction)."""
    refit_samples: int = 1_000_000
    """Training samples between refits of the peak models and their directions."""
    refit_inputs: int = 4096
    """Inputs drawn from a held-out stream for each refit."""
    delay_samples: int = 5_000_000
    """Samples trained without the penalty (the latent must form its peaks first)."""
    warmup_samples: int = 5_000_000
    """Samples over which the penalty's weight rises linearly to `coefficient`."""

    def __post_init__(self) -> None:
        require(
            math.isfinite(self.coefficient) and self.coefficient >= 0,
            "inverse.coefficient",
            f"must be >= 0, got {self.coefficient}",
        )
        require(
            self.refit_samples >= 1,
            "inverse.refit_samples",
            f"must be >= 1, got {self.refit_samples}",
        )
        require(
            self.refit_inputs >= 256,
            "inverse.refit_inputs",
            f"must be >= 256, got {self.refit_inputs}",
        )
        require(
            self.delay_samples >= 0,
            "inverse.delay_samples",
            f"must be >= 0, got {self.delay_samples}",
        )
        require(
            self.warmup_samples >= 0,
            "inverse.warmup_samples",
            f"must be >= 0, got {self.warmup_samples}",
        )


@dataclass
class SAEConfig:
    label: str = "tied"
    """Name of this SAE in tables, figures and weight files."""
    architecture: Annotated[str, OneOf(registered_architectures)] = "tied"
    """A registered architecture (broken_latents/saes/): tied: W_enc = W_dec^T and b_enc = 0.
    untied: independent encoder and decoder."""
    latents: int = 5
    """Number of SAE latents K."""
    activation: Literal["relu", "jumprelu", "topk", "batchtopk"] = "relu"
    """relu; jumprelu (threshold per latent: tau_j of the aux loss when it is on, else learned);
    topk (the k largest pre-activations of each sample, ReLU'd); batchtopk (the k x B largest over a
    training batch of B; evaluated with a threshold learned in training, see `StackedSAE.activate`)."""
    k: int | None = None
    """Active latents per sample for topk (on average, for batchtopk); required by those, unused by the others."""
    l1: float = 3e-3
    """L1 coefficient (tied: plain L1 of activations; untied: weighted by decoder-row norm)."""
    aux: AuxConfig | None = None
    """Activation-orthogonality loss; absent means off."""
    matryoshka_widths: list[int] | None = None
    """Matryoshka SAE (SAELens' name): nested prefixes [w1 < w2 < ... = latents]; the reconstruction
    loss sums the squared error of the reconstruction from the first w latents over every w (the
    sparsity term counts once). Absent: a plain SAE."""
    inverse: InverseConfig | None = None
    """The inverse technique (project the higher activation peaks' directions out of a latent); absent means off."""
    options: Any = None
    """The architecture's own fields: an instance of its `Options` dataclass (saes/), written flat
    in [[sae]] beside the fields above. None: that architecture's defaults."""

    flat_fields: ClassVar[tuple[str, ...]] = ("options",)
    """Fields whose table is written into this one's (TOML and --set never see an `options` key)."""

    @classmethod
    def flat_tables(cls, data: dict, where: str) -> dict[str, type]:
        """{field: dataclass} of the flat fields for the [[sae]] table `data`: the keys an
        architecture owns belong to it, so which they are depends on `architecture`."""
        architecture = data.get("architecture", cls.architecture)
        hint = typing.get_type_hints(cls, include_extras=True)["architecture"]
        structure(hint, architecture, f"{where}.architecture" if where else "architecture")
        return {"options": architecture_options(architecture)}

    @staticmethod
    def owner_of(key: str) -> str | None:
        """For an unknown key that another architecture owns: which, to say in the error."""
        owners = [
            name
            for name in registered_architectures()
            if key in {f.name for f in dataclasses.fields(architecture_options(name))}
        ]
        return f" (a field of architecture {', '.join(map(repr, owners))} only)" if owners else None

    def __post_init__(self) -> None:
        require(
            bool(self.label) and all(c.isalnum() or c in "-_" for c in self.label),
            "sae.label",
            f"must be letters, digits, '-' or '_', got {self.label!r}",
        )
        require(
            self.label not in RESERVED_LABELS and not self.label.isdigit(),
            "sae.label",
            f"{self.label!r} is reserved: a label may not be {', '.join(map(repr, RESERVED_LABELS))} "
            "or digits alone (--set sae.N reads N as an index)",
        )
        where = f"sae.{self.label}"
        require(
            self.architecture in registered_architectures(),
            f"{where}.architecture",
            f"must be one of {', '.join(map(repr, registered_architectures()))}; got {self.architecture!r}",
        )
        owned = architecture_options(self.architecture)
        if self.options is None:
            self.options = owned()
        require(
            isinstance(self.options, owned),
            f"{where}.options",
            f"architecture {self.architecture!r} takes {owned.__qualname__}, got {type(self.options).__qualname__}",
        )
        require(self.latents >= 1, f"{where}.latents", f"must be >= 1, got {self.latents}")
        require(
            math.isfinite(self.l1) and self.l1 >= 0, f"{where}.l1", f"must be >= 0, got {self.l1}"
        )
        if self.activation in K_ACTIVATIONS:
            require(
                self.k is not None,
                f"{where}.k",
                f"is required by activation {self.activation!r} "
                f"(an integer in [1, {self.latents}])",
            )
        if (
            self.k is not None
        ):  # DESIGN's example table sets k beside relu: allowed there, and unused
            require(
                1 <= self.k <= self.latents,
                f"{where}.k",
                f"must lie in [1, latents = {self.latents}], got {self.k}",
            )
        widths = self.matryoshka_widths
        if widths is not None:
            allowed = f"a strictly increasing list of positive integers ending at latents = {self.latents}"
            require(
                len(widths) >= 1
                and all(isinstance(w, int) and not isinstance(w, bool) for w in widths),
                f"{where}.matryoshka_widths",
                f"must be {allowed}, got {widths!r}",
            )
            require(
                widths[0] >= 1
                and all(a < b for a, b in zip(widths, widths[1:]))
                and widths[-1] == self.latents,
                f"{where}.matryoshka_widths",
                f"must be {allowed}, got {widths}",
            )

    def unused_settings(self) -> list[str]:
        """Settings given that this SAE's activation does not use, said in words (the CLI prints them)."""
        if self.k is not None and self.activation not in K_ACTIVATIONS:
            return [
                f"sae.{self.label}.k = {self.k} is unused: activation {self.activation!r} keeps every "
                f"positive latent (k applies to 'topk' and 'batchtopk')"
            ]
        return []

    def nested_widths(self) -> list[int] | None:
        """The Matryoshka widths when they nest more than one prefix, else None (a plain SAE:
        widths [latents] alone train exactly as no widths)."""
        return (
            self.matryoshka_widths
            if self.matryoshka_widths and len(self.matryoshka_widths) > 1
            else None
        )


@dataclass
class ExperimentConfig:
    name: str
    """Short name; also the default run directory's name."""
    description: str = ""
    """One line on what the experiment shows."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """[world]: the true features, their firing and co-occurrence."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """[train]: budget, optimiser, seeds and engine."""
    sae: list[SAEConfig] = field(default_factory=lambda: [SAEConfig()])
    """One or more SAEs; all train in lockstep on the same data stream."""

    def __post_init__(self) -> None:
        require(len(self.sae) >= 1, "sae", "needs at least one [[sae]] table")
        labels = [s.label for s in self.sae]
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        require(not dupes, "sae.label", f"labels must be unique, repeated: {dupes}")
