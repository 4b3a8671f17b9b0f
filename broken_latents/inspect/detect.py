"""`broken-latents inspect`: which latents of an SAE trained anywhere look broken, from activations alone.

The activations are streamed in chunks (a .npy is memory-mapped, a .safetensors tensor read by
slices), so a file larger than memory works. Two passes:

1. every row: per latent, exact counts (fires, max) and a uniform reservoir sample of at most
   RESERVOIR positive activations, to which the peak model is fitted (signals.peak_model);
2. after the peak models (fitted to the reservoirs), the first COACTIVATION_ROWS rows again: how
   often each latent and each of its decoder neighbours are active together, and how often one fires
   weakly (below half its main peak) while the other is active (signals.CoActivation).

Memory is bounded whatever the number of rows: K x RESERVOIR x 4 bytes of reservoirs, one chunk
of at most CHUNK_BYTES of activations and latents, and K x NEIGHBOURS pair counts (K = 4096:
164 MiB + 64 MiB + 0.5 MiB).

Per latent: the signals (signals.py, each from weights and activations only), `score` the
calibrated probability of broken (score.py: the kind of model its weights file names, since the
fifth version the mean of boosted trees and a logistic regression, fitted by the detection benchmark,
weights in score_weights.json), and `broken` = score >= the stated `threshold_score`.
Silent latents (no firing) score 0. `peaks`, `mixture`, `threshold` are the peak model's.

Output (written to a hidden sibling folder and renamed into place at the end, so a failed or
interrupted inspect leaves nothing that looks complete): DIR/inspect.json, DIR/figures/*.png
for the FIGURES highest-scoring latents, DIR/report.html with the figures embedded.
"""

from __future__ import annotations

import base64
import html
import json
import mmap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from ..files.atomic import folder_in_place
from ..output.rundir import check_replaceable
from ..world.activations import ActivationFile
from ..config.schema import ConfigError
from ..analysis.peaks import PEAK_FLOOR, MAX_SAMPLES, PeakModel
from ..output.saelens_format import NumpySAE, load_sae
from ..analysis.score import load_score_model
from .result import InspectResult
from ..analysis.signals import (
    ACTIVE_SHARE,
    SIGNALS,
    CoActivation,
    latent_signals,
    neighbour_pairs,
    peak_models,
    peak_summary,
    weak_band,
)

RESERVOIR = MAX_SAMPLES
"""Positive activations kept per latent (a uniform sample of all of them): K x RESERVOIR x 4 bytes."""
CHUNK_BYTES = 64 * 2**20
"""Rows per chunk are chosen so one chunk of activations and its latents stay under this."""
FIGURES = 8
"""Histograms drawn: the most suspicious latents by score."""
TABLE_ROWS = 50
COACTIVATION_ROWS = 1_000_000
"""Rows read again for the co-activation counts: enough for latents firing on 1 in 10^4 inputs."""
SEED = 0


def open_activations(path: str | Path, key: str | None) -> ActivationFile:
    """The one activation reader (world/activations.py), with this command's flag names in its errors;
    no NaN scan up front: each chunk is checked as it streams (_encoded), one pass over the file, not two."""
    if Path(path).suffix == ".npy" and key is not None:
        raise ConfigError(
            "--key", f"applies to .safetensors files only; {path} is a .npy holding one array"
        )
    return ActivationFile.open(path, key, field="--activations", key_field="--key", scan=False)


def _chunks(file: ActivationFile, rows: int, limit: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 chunk [B, D]) over the first `limit` rows, never the whole file at once."""
    mapping = getattr(file.rows, "_mmap", None)  # a memory-mapped .npy
    for start in range(0, limit, rows):
        chunk = file.read(start, min(start + rows, limit))  # a float32 copy
        if mapping is not None:
            # Drop the pages just read from this process: mapped pages count as resident, so
            # otherwise the RSS grows with the file (611 MiB after a 614 MB file; 38 MiB with this).
            mapping.madvise(mmap.MADV_DONTNEED)
        yield start, chunk


class Reservoirs:
    """Per latent, a uniform sample of at most `size` of its positive activations (algorithm R,
    vectorised over a chunk): the i-th positive value (0-based) replaces a random slot with
    probability size / (i + 1), so every value seen so far is kept with equal probability."""

    def __init__(self, latents: int, size: int, seed: int):
        self.size = size
        self.values_KR = np.zeros((latents, size), dtype=np.float32)
        self.seen_K = np.zeros(latents, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def add(self, h_BK: np.ndarray, counts_K: np.ndarray | None = None) -> None:
        """`counts_K`: the chunk's positive values per latent, if already counted (`positive_counts`)."""
        h_BK = np.ascontiguousarray(h_BK, dtype=np.float32)
        if counts_K is None:
            counts_K = positive_counts(h_BK, np.zeros(h_BK.shape[1], np.float32))
        # one uniform per positive value, in the order of the values sorted by latent then row
        uniforms = self.rng.random(int(counts_K.sum()))
        _reservoir_update(h_BK, counts_K, self.seen_K, uniforms, self.values_KR)
        self.seen_K += counts_K

    def sample(self, j: int) -> np.ndarray:
        return self.values_KR[j, : min(self.seen_K[j], self.size)]


@numba.njit(cache=True, nogil=True)
def positive_counts(h_BK, max_K):
    """Each latent's positive values in the chunk [K]; raises max_K to the chunk's max in place."""
    B, K = h_BK.shape
    counts_K = np.zeros(K, np.int64)
    for r in range(B):
        for j in range(K):
            v = h_BK[r, j]
            counts_K[j] += v > 0
            if v > max_K[j]:
                max_K[j] = v
    return counts_K


@numba.njit(cache=True, nogil=True)
def _reservoir_update(h_BK, counts_K, seen_K, uniforms, values_KR):
    """Algorithm R over the chunk's positive values, latent by latent in row order: the i-th value of
    latent j's stream goes to slot i while i < size, else to slot floor(u (i + 1)) if that is < size,
    u the uniform at the value's place in the values sorted by latent then row. Writes in row order:
    a later value in a slot replaces an earlier one."""
    B, K = h_BK.shape
    size = values_KR.shape[1]
    place_K = np.zeros(K, np.int64)  # where latent j's values start in that sorted order
    for j in range(1, K):
        place_K[j] = place_K[j - 1] + counts_K[j - 1]
    taken_K = np.zeros(K, np.int64)
    for r in range(B):
        for j in range(K):
            v = h_BK[r, j]
            if v > 0:
                t = seen_K[j] + taken_K[j]  # the value's index in latent j's stream
                slot = t if t < size else np.int64(uniforms[place_K[j] + taken_K[j]] * (t + 1))
                if slot < size:
                    values_KR[j, slot] = v
                taken_K[j] += 1


@dataclass
class InspectOutcome:
    directory: Path
    result: dict


def inspect_sae(
    sae_path: str | Path,
    activations: str | Path,
    key: str | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> InspectOutcome:
    """Check everything, stream the activations, fit a peak model per latent, write DIR atomically.
    `timings`, when given, receives the wall seconds of each phase (studies/inspect_scale.py)."""
    timings = {} if timings is None else timings
    sae_path = Path(sae_path)
    if limit is not None and limit < 1:
        raise ConfigError("--limit", f"must be >= 1, got {limit}")
    sae = load_sae(sae_path)
    file = open_activations(activations, key)
    if file.dim != sae.d_in:
        raise ConfigError(
            "--activations",
            f"{file.path} has D = {file.dim} per sample but the SAE takes d_in = {sae.d_in}",
        )
    out = Path(out) if out is not None else Path("inspect") / sae_path.stem
    check_replaceable(out, "inspect.json", "an earlier inspect folder", "an earlier inspect folder")
    samples = min(file.n, limit) if limit else file.n
    fires_K, max_K, reservoirs = first_pass(sae, file, samples, progress, timings)
    clock = time.perf_counter()
    models = peak_models([reservoirs.sample(j) for j in range(sae.d_sae)], seed=SEED)
    timings["peak models"] = time.perf_counter() - clock
    weak_K2 = np.array([weak_band(m) for m in models])
    coactivation = coactivation_pass(sae, file, samples, max_K, weak_K2, progress, timings)
    signals = latent_signals(
        sae.W_enc,
        sae.W_dec,
        coactivation,
        [peak_summary(m, reservoirs.sample(j)) for j, m in enumerate(models)],
    )
    scorer = load_score_model()
    score_K = np.where(fires_K > 0, scorer.probability(signals), 0.0)
    result = {
        "sae": str(sae_path),
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "activations": str(file.path),
        "key": key,
        "samples": samples,
        "threshold_score": scorer.threshold,
        "rules": {
            "peak_floor": PEAK_FLOOR,
            "reservoir": RESERVOIR,
            "coactivation_rows": min(samples, COACTIVATION_ROWS),
            "signals": list(SIGNALS),
            "score": f"probability of broken: {scorer.fitted.get('model', 'see score_fitted')} "
            "(analysis/score_weights.json)",
            "broken": f"score >= threshold_score ({scorer.threshold})",
            "score_fitted": scorer.fitted,
        },
        "latents": [
            _latent_record(
                j,
                fires_K[j] / samples,
                float(max_K[j]),
                models[j],
                float(score_K[j]),
                scorer.threshold,
                {name: float(signals[name][j]) for name in SIGNALS},
            )
            for j in range(sae.d_sae)
        ],
    }
    # Written through the typed schema (inspect/result.py): the same bytes, checked as it is built.
    result = InspectResult.from_json(result).to_json()
    _write_folder(out, result, reservoirs, models)
    return InspectOutcome(out, result)


def _encoded(sae: NumpySAE, file: ActivationFile, samples: int, progress: bool, what: str):
    """(first row, latents [B, K]) chunk by chunk over the first `samples` rows; a non-finite value
    or an unreadable (truncated) file is a ConfigError naming the first bad sample."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    rows = max(1, CHUNK_BYTES // (4 * (file.dim + sae.d_sae)))
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("samples", total=samples)
        chunks = _chunks(file, rows, samples)
        while True:
            try:
                start, x_BD = next(chunks)
            except StopIteration:
                return
            except ConfigError:
                raise
            except Exception as err:  # a file cut short fails only when its missing rows are read
                raise ConfigError(
                    "--activations",
                    f"{file.path} could not be read past its first rows "
                    f"(truncated or corrupt?): {err}; nothing was written",
                ) from None
            bad = ~np.isfinite(x_BD).all(axis=1)
            if bad.any():
                raise ConfigError(
                    "--activations",
                    f"{file.path} has NaN or infinite values (first at sample "
                    f"{start + int(np.argmax(bad))}); nothing was written",
                )
            yield start, sae.encode(x_BD)
            bar.advance(task, len(x_BD))


def first_pass(
    sae: NumpySAE,
    file: ActivationFile,
    samples: int,
    progress: bool = False,
    timings: dict[str, float] | None = None,
):
    """Every row: (fires [K], max [K], reservoirs). Sized by K and RESERVOIR, never by the rows."""
    timings = {} if timings is None else timings
    clock = time.perf_counter()
    fires_K = np.zeros(sae.d_sae, dtype=np.int64)
    max_K = np.zeros(sae.d_sae, dtype=np.float32)
    reservoirs = Reservoirs(sae.d_sae, RESERVOIR, SEED)
    for _, h_BK in _encoded(sae, file, samples, progress, "inspect"):
        counts_K = positive_counts(h_BK, max_K)
        fires_K += counts_K
        reservoirs.add(h_BK, counts_K)
    timings["streaming pass"] = time.perf_counter() - clock
    return fires_K, max_K, reservoirs


def coactivation_pass(
    sae: NumpySAE,
    file: ActivationFile,
    samples: int,
    max_K: np.ndarray,
    weak_K2: np.ndarray | None = None,
    progress: bool = False,
    timings: dict[str, float] | None = None,
) -> CoActivation:
    """The first COACTIVATION_ROWS rows again: co-activation counts of the neighbour pairs, and with
    `weak_K2` (each latent's weak band, from its peak model) the weak-while-partner-active counts.
    Sized by K x NEIGHBOURS."""
    timings = {} if timings is None else timings
    clock = time.perf_counter()
    coactivation = CoActivation(neighbour_pairs(sae.W_dec), ACTIVE_SHARE * max_K, weak_K2)
    for _, h_BK in _encoded(sae, file, min(samples, COACTIVATION_ROWS), progress, "co-activation"):
        coactivation.add(h_BK)
    timings["co-activation pass"] = time.perf_counter() - clock
    return coactivation


def _latent_record(
    j: int,
    fires: float,
    top: float,
    model: PeakModel,
    score: float,
    threshold: float,
    signals: dict[str, float],
) -> dict:
    fitted = model.to_json()
    return {
        "latent": j,
        "fires": round(float(fires), 6),
        "peaks": model.n_peaks,
        "mixture": fitted["mixture"],
        "threshold": fitted["threshold"],
        "broken": bool(score >= threshold),
        "score": round(score, 4),
        "signals": {name: round(value, 4) for name, value in signals.items()},
        "peak_means": fitted["peak_means"],
        "max": round(top, 6),
        "floor": fitted["floor"],
        "fitted": model.fitted,
    }


def suspicious(result: dict, n: int) -> list[dict]:
    """The n latents with the highest score (ties: the more often firing first)."""
    return sorted(result["latents"], key=lambda r: (-r["score"], -r["fires"], r["latent"]))[:n]


# -- output -----------------------------------------------------------------------------------


def _write_folder(out: Path, result: dict, reservoirs: Reservoirs, models: list[PeakModel]) -> None:
    """DIR's files, written through files/atomic.py: into a hidden partial folder that replaces DIR
    only once complete, so a failed or interrupted inspect leaves nothing half-written."""
    with folder_in_place(out) as partial:
        (partial / "figures").mkdir()
        figures = []
        for record in suspicious(result, FIGURES):
            j = record["latent"]
            if models[j].n_peaks:
                path = partial / "figures" / f"latent-{j}.png"
                histogram(reservoirs.sample(j), models[j], record, path)
                figures.append(path)
        (partial / "report.html").write_text(render_html(result, figures))
        (partial / "inspect.json").write_text(json.dumps(result, indent=1))


def histogram(acts: np.ndarray, model: PeakModel, record: dict, path: Path) -> None:
    """The fitted activations (above the floor) as a density, the mixture and its components over
    them, the threshold; the share of firings below the floor (not shown) is written on the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = acts[acts > model.floor]
    below = 1.0 - shown.size / max(acts.size, 1)
    fig, ax = plt.subplots(figsize=(6.0, 3.6), layout="constrained")
    top = float(shown.max()) * 1.02
    # Bins over [floor, top], not the data's own span: a latent firing at one exact value has a span
    # of a few float32 steps, too narrow for 100 bins.
    ax.hist(
        shown, bins=100, range=(model.floor, top), density=True, color="0.75", label="activations"
    )
    grid = np.linspace(model.floor, top, 400)
    for i, c in enumerate(model.components):
        ax.plot(
            grid,
            model.density(grid, (i,)),
            color="tab:blue",
            lw=0.8,
            ls=":",
            label="components" if i == 0 else None,
        )
    ax.plot(grid, model.density(grid), color="tab:blue", lw=1.6, label="mixture")
    if model.threshold is not None:
        ax.axvline(
            model.threshold,
            color="tab:red",
            ls="--",
            lw=1.2,
            label=f"threshold {model.threshold:.3g}",
        )
    ax.set_xlabel(
        f"latent activation\n(not shown: {below:.0%} of the sampled firings, at or below the floor "
        f"{model.floor:.3g} = {PEAK_FLOOR:.0%} of the max)",
        fontsize=9,
    )
    ax.set_ylabel("density (firings above the floor)")
    verdict = "broken" if record["broken"] else "not broken"
    ax.set_title(
        f"latent {record['latent']}: {record['peaks']} peak(s), {verdict}, score {record['score']:.2f}",
        fontsize=10,
    )
    ax.legend(fontsize=7, loc="upper right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_html(result: dict, figures: list[Path]) -> str:
    """A self-contained page: facts, the rules, the most suspicious latents, the figures (base64)."""
    latents = result["latents"]
    broken = [r for r in latents if r["broken"]]
    silent = [r for r in latents if r["fires"] == 0]
    esc = html.escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in _row(r)) + "</tr>"
        for r in suspicious(result, TABLE_ROWS)
    )
    images = "".join(
        f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{esc(p.stem)}</figcaption></figure>"
        for p in figures
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>inspect: {esc(result["sae"])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:0.2em 0.6em;text-align:right}}
img{{max-width:100%}}</style></head><body>
<h1>Broken-latent inspection</h1>
<ul><li>SAE: <code>{esc(result["sae"])}</code> ({esc(result["architecture"])}, d_in {result["d_in"]},
d_sae {result["d_sae"]})</li>
<li>activations: <code>{esc(result["activations"])}</code>{"" if not result["key"] else f" [{esc(result['key'])}]"},
{result["samples"]:,} samples</li>
<li>broken: {len(broken)} of {len(latents)} latents; silent: {len(silent)}</li></ul>
<h2>Rules</h2>
<p>Per latent, signals read from the SAE's weights and these activations only (never a true feature):
{_signal_list()}
<b>score</b>: the probability that the latent is broken, {esc(str(result["rules"]["score_fitted"].get("model", "")))}, fitted by the
detection benchmark ({esc(str(result["rules"]["score_fitted"].get("benchmark", "")))}, fitted on world seeds
{esc(str(result["rules"]["score_fitted"].get("fit_world_seeds", "")))}); <b>broken</b>: score &ge;
{result["threshold_score"]}. The peak model: a 1-D Gaussian mixture (components by BIC, up to 5) fitted to a
uniform sample of at most {result["rules"]["reservoir"]:,} of the latent's activations above {PEAK_FLOOR:.0%}
of its max (a single Gaussian where the smoothed histogram shows one bump); <b>threshold</b>: where the main
peak's weighted density equals the next peak's (one peak: its mean minus 3 std).</p>
<h2>Highest-scoring latents</h2>
<table><tr><th>latent</th><th>fires</th><th>peaks</th><th>peak means</th>{"".join(f"<th>{esc(n)}</th>" for n in SIGNALS)}
<th>score</th><th>broken</th></tr>{rows}</table>
<h2>Histograms</h2>{images or "<p>No latent fired often enough to fit.</p>"}
</body></html>
"""


def _signal_list() -> str:
    from ..analysis import signals

    lines = [line[2:] for line in signals.__doc__.split("\n") if line.startswith("- ")]
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def _row(r: dict) -> list[str]:
    means = ", ".join(f"{m:.3g}" for m in r["peak_means"])
    return [
        str(r["latent"]),
        f"{r['fires']:.4f}",
        str(r["peaks"]),
        means,
        *(f"{r['signals'][n]:.3f}" for n in SIGNALS),
        f"{r['score']:.3f}",
        "yes" if r["broken"] else "no",
    ]


def print_summary(outcome: InspectOutcome, console) -> None:
    from rich.table import Table

    result = outcome.result
    broken = [r for r in result["latents"] if r["broken"]]
    table = Table(
        title=f"{len(broken)} of {result['d_sae']} latents look broken ({result['samples']:,} samples)"
    )
    for column in ("latent", "fires", "peaks", *SIGNALS, "score"):
        table.add_column(column.replace("_", " "), justify="right")
    for r in suspicious(result, 10):
        if r["broken"]:
            table.add_row(
                str(r["latent"]),
                f"{r['fires']:.4f}",
                str(r["peaks"]),
                *(f"{r['signals'][n]:.2f}" for n in SIGNALS),
                f"{r['score']:.3f}",
            )
    console.print(table)
    console.print(
        f"inspect folder: {outcome.directory}  (report: {outcome.directory / 'report.html'})"
    )
