"""Metrics of SAEs trained on stored activations.

Without ground truth: what needs none (MSE, explained variance, L0, dead latents, each latent's peak
model, and the detector's signals and calibrated broken score from the weights and activations). With concept labels [N, C] (and so probe directions, or directions
given directly) the probe-based truth: each concept's direction plays the true feature, so the
decoder cosines, the one-to-one matching, learned/broken latents and SAEBench's absorption fraction
(absorption.py, with the concept's labels as its firing) are the toy worlds' own, and per hierarchy
edge the absorption gap (SynthSAEBench's, analysis/scale.py) beside SAELens' MCC, F1 and the rest.

extra.absorption_fraction_gap of edge parent p -> child c: the parent's absorption fraction on
held-out tokens where the child is active too, minus that on tokens where the parent is active
without the child (a parent latent that goes quiet exactly when a child fires gives near 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .absorption import absorption_metrics, cooccurring
from .saebench_absorption import main_latents, saebench_absorption
from .measure import _round, match_latents, modelled_latents, synthbench_fields
from .metrics import CLEAN_COS, Metrics, PeakModelRecord, RunMetrics, WorldMetrics
from .scale import FiringTally, decoder_scores, parent_latents
from .peaks import EMPTY, count_peaks, fit_peak_model
from .score import load_score_model
from .signals import signals_of
from .truth import truth_broken

EVAL_ROWS = 50_000
"""Held-out rows the metrics are computed on (at most)."""


@dataclass
class Truth:
    """Probe-based ground truth: one unit direction per concept kept, and its labels."""

    directions_CD: np.ndarray
    concepts: list[int]
    """Column of the labels file (or row of the directions file) of each direction."""
    labels_NC: np.ndarray | None = None
    """Labels of every activation row, columns as `concepts` (None: directions given without labels)."""
    edges: list[tuple[int, int]] = field(default_factory=list)
    """(parent, child) pairs, as indices into `concepts`."""
    dropped: list[dict] = field(default_factory=list)
    """Concepts left out, each {concept, why}."""
    probes: list[dict] = field(default_factory=list)
    """Per concept probed: accuracy, balanced accuracy, rate, kept."""
    probe_weights_CD: np.ndarray | None = None
    """Each kept concept's logistic probe in the activations' coordinates (score x . w + b > 0: active),
    for SAEBench's absorption (saebench_absorption.py); None without labels."""
    probe_bias_C: np.ndarray | None = None
    direction_source: str = "given"
    """Where the directions come from: "given" (world.directions), or "own: class mean beyond the parent"."""


KSPARSE_ROWS = 10_000
"""Training rows SAEBench's k-sparse probes (which latents are a concept's own) are fitted on."""
PROBE_TOKENS = 10_000
"""Training rows each concept's probe is fitted on (and as many others it is tested on)."""
MIN_PROBE_ACCURACY = 0.95
MEAN_ROWS = 1_000_000
"""Training rows the class means are taken over (at most)."""


def truth_from_config(world, source, train_rows: range) -> Truth | None:
    """The probe-based truth `[world]` asks for: None without labels or directions. With labels, each
    concept's direction is what it adds beyond its parent on the training rows (`own_directions`: its
    class mean minus the mean where its parent is active without it), unless `directions` gives them,
    and a concept that a logistic probe cannot tell apart is dropped, with the reason. The files were
    checked before training (`training.on_activations.check_activations`)."""
    from ..language.probes import edges_from_labels, fit_probes, own_directions
    from ..world.activations import read_directions, read_labels

    if world.labels is None and world.directions is None:
        return None
    given = read_directions(world.directions, source.dim) if world.directions is not None else None
    if world.labels is None:
        return Truth(given, list(range(len(given))))
    labels = read_labels(world.labels, source.n)
    x_train = source.read(
        train_rows.start, min(train_rows.stop, train_rows.start + 4 * PROBE_TOKENS)
    )
    labels_train = labels[train_rows.start : train_rows.start + len(x_train)]
    probes = fit_probes(x_train, labels_train, PROBE_TOKENS, MIN_PROBE_ACCURACY)
    kept = probes.kept
    stop = min(train_rows.stop, train_rows.start + MEAN_ROWS)
    all_edges = edges_from_labels(labels[train_rows.start : stop])
    directions = (
        given
        if given is not None
        else own_directions(
            source.read(train_rows.start, stop), labels[train_rows.start : stop], all_edges
        )
    )
    kept_labels = np.asarray(labels[:, kept])
    return Truth(
        directions[kept],
        kept,
        kept_labels,
        edges_from_labels(kept_labels),
        dropped=[{"concept": p.concept, "why": p.why_dropped} for p in probes.probes if not p.kept],
        probes=[p.to_json() for p in probes.probes],
        probe_weights_CD=probes.weights_CD[kept],
        probe_bias_C=probes.bias_C[kept],
        direction_source="given" if given is not None else "own: class mean beyond the parent",
    )


@torch.no_grad()
def measure_on_activations(
    result, truth: Truth | None = None, clean_cos: float = CLEAN_COS
) -> Metrics:
    """One run entry per (SAE, seed), on up to EVAL_ROWS held-out rows. `truth`: by default the one
    the run's `[world]` asks for (`truth_from_config`, on its training rows; None without labels or
    directions)."""
    if truth is None:
        truth = truth_from_config(result.config.world, result.source, result.train_rows)
    # The rows, read before any analysis: up to EVAL_ROWS held-out rows, and (with labels and probes)
    # the first KSPARSE_ROWS training rows and their labels for SAEBench's k-sparse probes.
    rows = result.test_rows if len(result.test_rows) else result.train_rows
    stop = min(rows.start + EVAL_ROWS, rows.stop)
    x_BD = torch.from_numpy(result.source.read(rows.start, stop))
    ksparse = None
    if truth is not None and truth.labels_NC is not None and truth.probe_weights_CD is not None:
        fit = result.train_rows
        fit_stop = min(fit.start + KSPARSE_ROWS, fit.stop)
        x_fit_ND = torch.from_numpy(result.source.read(fit.start, fit_stop))
        ksparse = x_fit_ND, truth.labels_NC[fit.start : fit_stop]
    variance = float((x_BD - x_BD.mean(0)).pow(2).sum(-1).mean())
    labels = (
        truth.labels_NC[rows.start : stop]
        if truth is not None and truth.labels_NC is not None
        else None
    )
    F = truth.directions_CD if truth is not None else None
    cooccur = (
        cooccurring([{"parent": p, "children": [c]} for p, c in truth.edges], len(truth.concepts))
        if truth
        else {}
    )
    runs = []
    # Full absorption compares the others' share with the input's own projection on the concept,
    # taken from the mean (b_dec carries the mean, no latent does).
    x_proj_BC = (
        (x_BD - x_BD.mean(0)).double().numpy() @ F.T.astype(np.float64) if F is not None else None
    )
    for stack in result.stacks:
        sae = stack.sae
        x_SBD = x_BD.expand(sae.n_saes, -1, -1)
        h_SBK, x_hat = sae(x_SBD, stack.tau_SK)
        mse_S = (x_hat - x_SBD).pow(2).sum(-1).mean(-1)
        widths = stack.config.matryoshka_widths or [sae.latents]
        width_mse = [(sae.decode(h_SBK, w) - x_SBD).pow(2).sum(-1).mean(-1) for w in widths]
        W_enc_SDK, _ = sae.encoder()
        acts_train_SNK = (
            sae(ksparse[0].expand(sae.n_saes, -1, -1), stack.tau_SK)[0] if ksparse else None
        )
        for s, seed in enumerate(result.seeds):
            acts = h_SBK[s].numpy()
            W_dec = sae.W_dec_SKD[s].numpy()
            live = acts.max(axis=0) > 0
            peaks = [count_peaks(acts[:, j]) if live[j] else (0, []) for j in range(sae.latents)]
            # The detector sees only the weights and the activations (analysis/signals.py, score.py).
            models = {
                j: fit_peak_model(acts[:, j], seed=seed) for j in modelled_latents(acts, live)
            }
            W_enc_DK = W_enc_SDK[s].numpy()
            signals, _ = signals_of(
                W_enc_DK,
                W_dec,
                acts,
                [models.get(j, EMPTY) for j in range(sae.latents)],
                tied=sae.tied_encoder,
            )
            score_K = np.where(live, load_score_model().probability(signals), 0.0)
            run = RunMetrics(
                label=stack.config.label,
                architecture=stack.config.architecture,
                seed=seed,
                decoder_cos=[],
                encoder_cos=[],
                latent_cos=_round(_cos(W_dec, W_dec)),
                decoder_norms=_round(np.linalg.norm(W_dec, axis=1)),
                matches=[],
                learned_features=[],
                broken_latents=[],
                dead_latents=[int(j) for j in np.flatnonzero(~live)],
                activation_peaks=[
                    models[j].n_peaks if j in models else 0 for j in range(sae.latents)
                ],
                peak_locations=[
                    [round(p.mean, 4) for p in models[j].peaks] if j in models else []
                    for j in range(sae.latents)
                ],
                histogram_peaks=[n for n, _ in peaks],
                peak_models=[
                    PeakModelRecord.from_json({"latent": int(j), **model.to_json()})
                    for j, model in models.items()
                ],
                broken_score=_round(score_K),
                detection_signals={name: _round(value) for name, value in signals.items()},
                mse=round(float(mse_S[s]), 6),
                l0=round(float((h_SBK[s] > 0).float().sum(-1).mean()), 4),
                explained_variance=round(float(1 - mse_S[s] / variance), 6),
                width_explained_variance=[round(float(1 - m[s] / variance), 6) for m in width_mse],
            )
            if truth is not None:
                _add_truth(
                    x_BD,
                    x_hat[s],
                    run,
                    truth,
                    F,
                    acts,
                    W_dec,
                    W_enc_SDK[s].numpy().T,
                    live,
                    labels,
                    cooccur,
                    clean_cos,
                    x_proj_BC,
                    (acts_train_SNK[s].numpy(), ksparse[1], seed) if ksparse else None,
                )
            runs.append(run)
    world_extra = {
        "activations": str(result.source.path),
        "rows": result.source.n,
        "dim": result.source.dim,
        "train_rows": len(result.train_rows),
        "held_out_rows": len(result.test_rows),
        "eval_rows": stop - rows.start,
        "eval_range": [rows.start, stop],
    }
    if truth is not None:
        world_extra.update(
            concepts=truth.concepts,
            direction_source=truth.direction_source,
            labelled=truth.labels_NC is not None,
            # The true features themselves, so absorption can be recomputed from the file and the weights.
            directions=np.round(np.asarray(truth.directions_CD, dtype=np.float64), 7).tolist(),
            edges=[list(e) for e in truth.edges],
            dropped=truth.dropped,
            probes=truth.probes,
        )
        if truth.probe_weights_CD is not None:
            # The probes themselves (score x . w + b), so SAEBench's absorption can be recomputed too.
            world_extra.update(
                probe_weights=np.asarray(truth.probe_weights_CD, dtype=np.float64).tolist(),
                probe_bias=np.asarray(truth.probe_bias_C, dtype=np.float64).tolist(),
            )
    rates = labels.mean(0).tolist() if labels is not None else []
    world = WorldMetrics(
        expected_mse=[],
        feature_cos=_round(_cos(F, F)) if F is not None else [],
        firing_rates=_round(np.asarray(rates)),
        dim=result.source.dim,
        hierarchy=_relations(truth.edges) if truth is not None else [],
        extra=world_extra,
    )
    return Metrics(
        name=result.config.name,
        samples=result.samples,
        samples_per_second=round(result.samples_per_second, 1),
        world=world,
        runs=runs,
        clean_cos=clean_cos,
    )


def _add_truth(
    x_BD,
    x_hat_BD,
    run: RunMetrics,
    truth: Truth,
    F_CD,
    acts_BK,
    W_dec_KD,
    W_enc_KD,
    live,
    labels_BC,
    cooccur,
    clean_cos: float,
    x_proj_BC,
    ksparse=None,
) -> None:
    """ksparse: (the SAE's activations on KSPARSE_ROWS training rows, their labels, the seed) for
    SAEBench's main latents, with probes; else None."""
    dec_cos = _cos(W_dec_KD, F_CD)
    matches = match_latents(dec_cos, live)
    run.decoder_cos, run.encoder_cos = _round(dec_cos), _round(_cos(W_enc_KD, F_CD))
    run.matches = matches
    run.learned_features = sorted(m.feature for m in matches if m.cos >= clean_cos)
    run.broken_latents = sorted(m.latent for m in matches if m.cos < clean_cos)
    run.extra["per_direction"] = direction_record(
        dec_cos, live, run.learned_features, truth.concepts
    )
    if labels_BC is None:
        return
    f_BC = labels_BC.astype(np.float64)
    matched = {m.feature: m.latent for m in matches}
    absorbed = absorption_metrics(
        acts_BK, W_dec_KD, F_CD, f_BC, matched, np.flatnonzero(live), cooccur, x_proj_BC
    )
    run.absorption, run.hedging = _round(absorbed.absorption), _round(absorbed.hedging)
    run.full_absorption = _round(absorbed.full_absorption)
    gaps = []
    for p, c in truth.edges:
        with_child = labels_BC[:, p] & labels_BC[:, c]
        without = labels_BC[:, p] & ~labels_BC[:, c]
        shares = [
            _absorption_of(p, rows, acts_BK, W_dec_KD, F_CD, matched)
            for rows in (with_child, without)
        ]
        gaps.append(
            {
                "parent": p,
                "child": c,
                "gap": round(shares[0] - shares[1], 4),
                "with_child": round(shares[0], 4),
                "without_child": round(shares[1], 4),
            }
        )
    run.extra["absorption_fraction_gap"] = gaps
    # The truth detection is scored against (analysis/truth.py): a concept's magnitude on a row is the
    # row's own projection on its direction, where the concept is active.
    f_BC = np.where(labels_BC, np.maximum(x_proj_BC, 1e-6), 0.0)
    broken, _, f1_K = truth_broken(acts_BK, W_dec_KD, F_CD, f_BC, live, clean_cos)
    run.truth_broken = [bool(b) for b in broken]
    run.extra["firing_f1"] = _round(f1_K)
    run.extra["detection"] = detection(run.truth_broken, run.broken_score)
    if ksparse is not None and truth.probe_weights_CD is not None:
        acts_train_NK, labels_train_NC, seed = ksparse
        main = main_latents(acts_train_NK, labels_train_NC, acts_BK, labels_BC, seed=seed)
        saebench = saebench_absorption(
            x_BD.numpy(),
            acts_BK,
            W_dec_KD,
            truth.probe_weights_CD,
            truth.probe_bias_C,
            labels_BC,
            main,
        )
        run.extra["saebench_absorption"] = saebench.to_json()
    # SynthSAEBench's metrics on SAELens' definitions (analysis/scale.py), the concepts as its features,
    # and its absorption gap per edge (the parent latent's firing without the child minus with it).
    scores_of = decoder_scores(dec_cos)
    tally = FiringTally(scores_of.best_feature_K, truth.edges, parent_latents(dec_cos, truth.edges))
    tally.add(torch.from_numpy(acts_BK), torch.from_numpy(f_BC), x_BD, x_hat_BD)
    scores = {"mcc": scores_of.mcc, "uniqueness": scores_of.uniqueness, **tally.scores()}
    for name, value in synthbench_fields(scores).items():
        setattr(run, name, value)


def direction_record(
    dec_cos_KC: np.ndarray, live_K: np.ndarray, learned: list[int], concepts: list[int]
) -> list:
    """Per direction: its best |cos| with a live latent's decoder row, that latent, and whether it is learned
    (a one-to-one match at >= clean_cos, `learned_features`)."""
    if not live_K.any():
        return [
            {
                "direction": c,
                "concept": concepts[c],
                "best_cos": 0.0,
                "latent": None,
                "learned": False,
            }
            for c in range(len(concepts))
        ]
    cos = np.where(live_K[:, None], np.abs(dec_cos_KC), -1.0)
    best_latent_C = cos.argmax(0)
    return [
        {
            "direction": c,
            "concept": concepts[c],
            "best_cos": round(float(cos[j, c]), 6),
            "latent": int(j),
            "learned": c in learned,
        }
        for c, j in enumerate(best_latent_C)
    ]


def detection(truth_broken: list[bool], broken_score: list[float]) -> dict:
    """The detector (its calibrated broken score, a latent flagged at the score model's threshold) against
    the truth's broken latents: counts, precision and recall (0 where nothing is flagged / broken, as the
    language claims count them)."""
    threshold = load_score_model().threshold
    flagged = [score >= threshold for score in broken_score]
    both = sum(t and f for t, f in zip(truth_broken, flagged))
    n_truth, n_flagged = sum(truth_broken), sum(flagged)
    return {
        "threshold": threshold,
        "truth_broken": n_truth,
        "flagged": n_flagged,
        "both": both,
        "precision": round(both / max(n_flagged, 1), 6),
        "recall": round(both / max(n_truth, 1), 6),
    }


def _absorption_of(p: int, rows: np.ndarray, acts_BK, W_dec_KD, F_CD, matched: dict) -> float:
    if not rows.any():
        return 0.0
    one = absorption_metrics(
        acts_BK[rows],
        W_dec_KD,
        F_CD[[p]],
        np.ones((int(rows.sum()), 1)),
        {0: matched[p]} if p in matched else {},
        [],
        {},
    )
    return one.absorption[0]


def _relations(edges: list[tuple[int, int]]) -> list[dict]:
    """The edges as [world.hierarchy] relations, one per parent (a child is only ever active with it)."""
    children: dict[int, list[int]] = {}
    for p, c in edges:
        children.setdefault(p, []).append(c)
    return [{"parent": p, "children": cs, "mode": "conditional"} for p, cs in children.items()]


def _cos(a_AD, b_BD) -> np.ndarray:
    a = np.asarray(a_AD, dtype=np.float64)
    b = np.asarray(b_BD, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


@torch.no_grad()
def stored_latent_activations(result, samples: int = 50_000) -> dict[str, np.ndarray]:
    """Held-out latent activations [samples, K] of every SAE, keyed "LABEL-seedN", for histograms."""
    rows = result.test_rows if len(result.test_rows) else result.train_rows
    x_BD = torch.from_numpy(result.source.read(rows.start, min(rows.start + samples, rows.stop)))
    out = {}
    for stack in result.stacks:
        h = stack.sae(x_BD.expand(stack.sae.n_saes, -1, -1), stack.tau_SK)[0].numpy()
        out.update(
            {f"{stack.config.label}-seed{seed}": h[s] for s, seed in enumerate(result.seeds)}
        )
    return out
