"""The schema of metrics.json as typed dataclasses: what analysis writes, and what claims,
reports and figures read. `to_json` gives the file's dict (keys as documented in DESIGN.md, in
its order; optional values left out when absent); `from_json` reads it back, so the two
round-trip, for files an older version wrote too (what they lack stays absent). Keys a newer
version wrote and this one does not know are kept in `extra`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config.convert import Dialect, json_kind, structure, unstructure
from ..config.errors import ConfigError
from ..config.toml_io import read_json

CLEAN_COS = 0.95
"""Decoder cosine with a true feature from which a latent counts as clean (learned)."""
ARRAYS_DIR = "arrays"
"""Where a run directory keeps the matrices too large for metrics.json (`DIR/arrays/*.npy`)."""
INLINE_MAX = 64 * 64 * 16
"""A matrix with more entries than this (64 latents x 1024 features, say) is held as a float16
numpy array, written to `DIR/arrays/NAME.npy`, and metrics.json names the file instead of holding
it: a 4096 x 16384 decoder table as JSON text would take about 600 MB and minutes to write."""
ARRAY_DTYPE = np.float16
"""Cosines in [-1, 1] to about 5e-4: what the tables and figures need, at half the bytes of float32."""


class SchemaError(ValueError):
    """A value of metrics.json that the schema does not allow; the message names where it is
    (e.g. `runs[2].decoder_cos[0]`)."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")


SCHEMA = Dialect(
    error=SchemaError,
    mismatch=lambda what, value: f"expected {what}, got {json_kind(value)}",
    item=lambda where, item, index: f"{where}[{index}]",
    required="required key missing",
    table="a JSON object",
    names={},
    exact_numbers=True,
)
"""metrics.json and inspect.json: `runs[0].seed: expected an integer, got a string`; numbers stay as
written, so a file read and written again is the same bytes."""


class _Schema:
    """to_json / from_json for a dataclass of the schema, through the one converter
    (config/convert.py): its field annotations say what each value of the file must be."""

    KEEP_NULL: tuple[str, ...] = ()
    """Optional fields written as null when None (rather than left out), as the file always had them."""

    def to_json(self) -> dict[str, Any]:
        return unstructure(self)

    @classmethod
    def from_json(cls, data: Any, where: str = ""):
        """Read `data` (the file's dict for this part), checking every value against the field's
        annotation; a missing required key or a value of the wrong kind raises SchemaError."""
        return structure(cls, data, where, SCHEMA)


class _Matrices:
    """Matrix fields that may be inline lists, a float16 array (large, before writing), or the
    name of a `.npy` file relative to the run directory (large, as read back)."""

    MATRICES: tuple[str, ...] = ()
    _root: Path | None = None

    def matrix(self, name: str) -> np.ndarray:
        """The matrix field `name` as a numpy array, whichever of the three forms it is in; a file
        is memory-mapped, so a row or a few columns of a large one cost only what they read."""
        value = getattr(self, name)
        if isinstance(value, str):
            if self._root is None:
                raise ValueError(
                    f"{name} lives in {value}: read the run with read_metrics(DIR/metrics.json)"
                )
            return np.load(self._root / value, mmap_mode="r")
        return np.asarray(value, dtype=np.float64 if isinstance(value, list) else value.dtype)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.matrix(name).shape)


@dataclass(kw_only=True)
class Match(_Schema):
    """A latent matched one-to-one to a true feature (Hungarian matching on decoder cosines)."""

    latent: int
    feature: int
    cos: float


@dataclass(kw_only=True)
class FiringPattern(_Schema):
    """One set of clean features firing together, and what every latent outputs then."""

    features: list[int]
    activations: list[float]


@dataclass(kw_only=True)
class MixtureComponent(_Schema):
    """One Gaussian of a peak model's mixture (analysis/peaks.py `Gaussian.to_json`)."""

    mean: float
    std: float
    """May round to 0 in the file: such a component is a spike (peaks.mixture_density copes)."""
    weight: float
    """Share of the fitted activations; the weights of a mixture sum to 1."""


@dataclass(kw_only=True)
class PeakModelRecord(_Schema):
    """One live latent's peak model as metrics.json holds it (analysis/peaks.py `PeakModel.to_json`:
    a Gaussian mixture fitted by BIC to the activations above the floor)."""

    KEEP_NULL = ("threshold",)

    latent: int
    mixture: list[MixtureComponent]
    """Every fitted component, sorted by mean."""
    peaks: int
    """Separated peaks (merged significant components)."""
    peak_means: list[float]
    threshold: float | None = None
    """The activation that separates the lowest peak from the rest; null (kept in the file) without one."""
    floor: float
    """Activations at or below this value were left out of the fit."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class AbsorptionGap(_Schema):
    """One parent -> child edge of the hierarchy (analysis/scale.py has the definition)."""

    parent: int
    child: int
    gap: float | None = None
    """P(parent latent on | parent on, child off) - P(parent latent on | parent on, child on);
    None where either condition never occurred in the held-out samples."""
    latent: int | None = None
    """The parent latent: the one whose decoder has the largest cosine with the parent's direction."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class RunMetrics(_Schema, _Matrices):
    """One SAE (label) of one seed."""

    MATRICES = ("decoder_cos", "encoder_cos", "latent_cos")

    label: str
    architecture: str | None = None
    seed: int
    decoder_cos: list[list[float]] | str
    """[latent][feature]: cosine of latent j's decoder row with true feature i. In a large run
    (more than INLINE_MAX entries), the name of its .npy file in the run directory: read it with
    `run.matrix("decoder_cos")`, as encoder_cos and latent_cos."""
    encoder_cos: list[list[float]] | str
    latent_cos: list[list[float]] | str
    decoder_norms: list[float]
    matches: list[Match]
    learned_features: list[int]
    broken_latents: list[int]
    dead_latents: list[int]
    activation_peaks: list[int]
    """[latent]: separated peaks of its activations by its peak model (0 for a dead latent); in an
    SAE with more than 256 live latents, those without a peak model (all but the 256 that fire
    most) count the peaks of their smoothed histogram (`histogram_peaks`)."""
    peak_locations: list[list[float]] = field(default_factory=list)
    """[latent]: the peaks' means."""
    histogram_peaks: list[int] | None = None
    """[latent]: peaks counted in a smoothed histogram above 20% of the max, the cross-check."""
    peak_models: list[PeakModelRecord] | None = None
    """Per live latent with a fitted model: its peak model (PeakModelRecord). Fitted to every live latent
    of an SAE with at most analysis.measure.PEAK_MODELS_MAX (64) of them, to the 64 that fire most in a
    wider one; every latent has `histogram_peaks`."""
    mse: float
    l0: float
    explained_variance: float
    width_explained_variance: list[float] | None = None
    """Explained variance of the reconstruction from the first w latents, per Matryoshka width w
    (a plain SAE: one value, the explained variance). Absent in runs from before it existed."""
    absorption: list[float] | None = None
    """[feature]: on inputs where it fires, the mean share of its projection carried by latents
    other than its match (absorption.py has the formula). Absent in runs from before it existed."""
    full_absorption: list[float] | None = None
    """[feature]: share of its inputs where its match is silent and other latents carry >= half."""
    hedging: list[float] | None = None
    """[latent]: signed sum of decoder cosines with the features co-occurring with its match."""
    firing_patterns: list[FiringPattern] = field(default_factory=list)
    loss_drop: float | None = None
    """The largest fall of one loss term over the last 10% of logged steps against the 10% before, as a
    share of the whole loss (analysis/convergence.py has the rule); absent: too few steps logged to tell."""
    falling_term: str | None = None
    """The loss term of `loss_drop` (mse, l1, prefix_mse)."""
    still_falling: bool | None = None
    """loss_drop above convergence.STILL_FALLING: the SAE had not converged (`run` warns)."""
    # -- detection : the truth per latent, and what the detector says without it ------
    truth_broken: list[bool] | None = None
    """[latent]: broken by the true features (analysis/truth.py): live, and decoder best |cos| < 0.95
    or firing F1 < 0.9 as a detector of that feature. Absent in runs from before it existed."""
    broken_score: list[float] | None = None
    """[latent]: the detector's probability of broken (analysis/score.py), from weights and activations only."""
    detection_signals: dict[str, list[float]] | None = None
    """{signal: [latent]}: the signals that fed broken_score (analysis/signals.py)."""
    # SynthSAEBench's metrics on SAELens' definitions (analysis/scale.py), over every eval sample.
    # Absent in runs from before they existed.
    mcc: float | None = None
    """Mean |cos| of the Hungarian matching of latents to features (SAELens' MCC)."""
    uniqueness: float | None = None
    """Distinct best-matching features over the latents, divided by the number of latents."""
    precision: float | None = None
    """Mean over latents of TP / (TP + FP) as a detector of its best-matching feature (h != 0 vs f > 0)."""
    recall: float | None = None
    """Mean over latents of TP / (TP + FN), as precision."""
    f1: float | None = None
    """Mean over latents of the F1 of precision and recall (0 where both are 0)."""
    shrinkage: float | None = None
    """Mean ||x_hat|| / ||x|| over the eval inputs (1: no shrinkage)."""
    sae_l0: float | None = None
    """Mean number of latents with h != 0 per input (SAELens counts != 0; `l0` counts > 0)."""
    true_l0: float | None = None
    """Mean number of features firing per input."""
    dead_count: int | None = None
    """Latents that fired on no eval input (SAELens' dead latents; `dead_latents` is ours)."""
    absorption_gap: list[AbsorptionGap] | None = None
    """Per parent -> child edge of the hierarchy; [] in a world without one."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class WorldMetrics(_Schema, _Matrices):
    MATRICES = ("feature_cos",)

    expected_mse: list[float]
    """p * m^2 per feature: what leaving the feature out costs, ignoring the decoder bias."""
    expected_mse_ranking: list[int] = field(default_factory=list)
    variance: list[float] | None = None
    """p (1 - p) m^2 per feature: what leaving it out costs once the decoder bias takes its mean
    (absent, as the ranking below, in runs from before it existed)."""
    variance_ranking: list[int] | None = None
    feature_cos: list[list[float]] | str
    """[feature][feature]; in a large world the name of its .npy file, as RunMetrics.decoder_cos."""
    max_feature_cos: float | None = None
    """Largest |cos| between two feature directions (main's superposition geometry)."""
    welch_bound: float | None = None
    """The least max |cos| any arrangement of the features in dim dimensions can reach."""
    firing_rates: list[float]
    """Marginal: the probability that each feature fires, hierarchy included."""
    magnitudes: list[float] | None = None
    dim: int | None = None
    """Input dimensions (absent in runs from before it was recorded)."""
    given_rates: list[float] | None = None
    """Each feature's rate as the config gives it: a conditional child's is its rate given the parent."""
    hierarchy: list[dict] | None = None
    """The config's parent/child relations: [{"parent", "children", "mode"}]."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class ClaimResult(_Schema):
    id: str
    text: str
    post: str = ""
    holds: bool
    seeds_held: int = 0
    seeds_run: int = 0
    per_seed: list[bool] = field(default_factory=list)
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Metrics(_Schema):
    """All of metrics.json."""

    name: str
    samples: int
    wall_seconds: float | None = None
    samples_per_second: float
    world: WorldMetrics
    runs: list[RunMetrics]
    description: str | None = None
    claims: list[ClaimResult] | None = None
    clean_cos: float | None = None
    """Decoder cosine from which a latent counted as clean in this run (CLEAN_COS unless the experiment sets it)."""
    extra: dict[str, Any] = field(default_factory=dict)


def inline_or_array(matrix: np.ndarray) -> list[list[float]] | np.ndarray:
    """A matrix as metrics hold it: rounded lists when small, a float16 array when large."""
    matrix = np.asarray(matrix)
    if matrix.size > INLINE_MAX:
        return matrix.astype(ARRAY_DTYPE)
    return np.round(matrix.astype(np.float64), 4).tolist()


def save_arrays(metrics: Metrics, directory: Path) -> list[str]:
    """Write every matrix held as an array to `directory/arrays/NAME.npy` and put the file's name
    (relative to `directory`) in its place, so metrics.json stays small. Returns the names."""
    written = []
    parts = [("world", metrics.world)] + [
        (f"{run.label}-seed{run.seed}", run) for run in metrics.runs
    ]
    for prefix, part in parts:
        for name in part.MATRICES:
            value = getattr(part, name)
            if isinstance(value, np.ndarray):
                relative = f"{ARRAYS_DIR}/{prefix}-{name}.npy"
                (directory / ARRAYS_DIR).mkdir(parents=True, exist_ok=True)
                np.save(directory / relative, value)
                setattr(part, name, relative)
                written.append(relative)
        part._root = Path(directory)
    return written


def read_metrics(path: Path, field: str) -> Metrics:
    """A metrics.json the user pointed us at; one that is not JSON, or not a metrics.json (required
    keys missing, wrong shapes), is a ConfigError naming `field`. Matrices kept in `arrays/` are
    read from there (`run.matrix(name)`); a file named but missing is a ConfigError too."""
    data = read_json(path, field)
    try:
        metrics = Metrics.from_json(data)
    except SchemaError as err:
        raise ConfigError(
            field, f"{path} is not a metrics.json this version reads: {err}"
        ) from None
    root = Path(path).parent
    for part in [metrics.world, *metrics.runs]:
        part._root = root
        for name in part.MATRICES:
            value = getattr(part, name)
            if isinstance(value, str) and not (root / value).is_file():
                raise ConfigError(
                    field, f"{path} names {value} for {name}, but {root / value} is missing"
                )
    return metrics


# -- per-run scalars (what a sweep can map) ----------------------------------------------------

RUN_SCALARS: dict[str, Any] = {
    "learned": lambda run: len(run.learned_features),
    "broken": lambda run: len(run.broken_latents),
    "dead": lambda run: len(run.dead_latents),
    "max_peaks": lambda run: max(run.activation_peaks, default=0),
    "explained_variance": lambda run: run.explained_variance,
    "mse": lambda run: run.mse,
    "l0": lambda run: run.l0,
    "still_falling": lambda run: run.still_falling,
    "loss_drop": lambda run: run.loss_drop,
}
"""Name -> one number per SAE and seed: counts of learned features / broken / dead latents, the most
activation peaks of any latent, and the reconstruction scalars. A new mappable number is one entry."""
LARGE_WORLD_SCALARS = (
    "mcc",
    "uniqueness",
    "precision",
    "recall",
    "f1",
    "shrinkage",
    "sae_l0",
    "true_l0",
    "dead_count",
)
"""Per-run keys metrics.json may hold beside the typed ones (DESIGN.md's large-world keys); a run
without the key has no value for it."""


def run_scalar(run: RunMetrics, name: str) -> float | None:
    """The scalar `name` (RUN_SCALARS or a numeric key in the run's extra keys) of one run; None if absent."""
    value = RUN_SCALARS[name](run) if name in RUN_SCALARS else getattr(run, name, None)
    value = run.extra.get(name) if value is None else value  # a key a newer version wrote
    return float(value) if isinstance(value, (int, float)) else None  # bool: 1.0 / 0.0


def scalar_names() -> list[str]:
    return [*RUN_SCALARS, *LARGE_WORLD_SCALARS]
