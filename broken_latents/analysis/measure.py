"""From trained SAEs to numbers: cosine tables, matching, clean/broken/dead latents, peaks, firing patterns."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .absorption import absorption_metrics, cooccurring
from .convergence import loss_drop, still_falling
from ..saes import StackedSAE
from ..world.stream import EVAL_STREAM, DataStream, held_out_batches
from .peaks import EMPTY, count_peaks, fit_peak_model
from .truth import truth_broken
from .metrics import (
    CLEAN_COS,
    AbsorptionGap,
    FiringPattern,
    Match,
    Metrics,
    PeakModelRecord,
    RunMetrics,
    WorldMetrics,
    inline_or_array,
)
from .scale import FiringTally, decoder_scores, hierarchy_edges, parent_latents
from ..config.schema import ExperimentConfig, SAEConfig
from ..world.model import World, max_abs_cos, welch_bound

DETAIL_BYTES = 2**30
"""The per-latent analyses (peaks, absorption, firing patterns) hold their held-out samples, inputs
and activations at once; they take as many of the eval samples as fit in this many bytes per seed
(per seed, so that seed r is measured on the same samples whichever seeds run beside it). Small
worlds fit all of them; SynthSAEBench's metrics stream over every eval sample whatever the size."""
STREAM_BYTES = 64 * 2**20
"""One streamed batch of held-out feature magnitudes [R, N, B] takes at most this many bytes."""


FIRING_PATTERNS_MAX = 256
"""Firing patterns (every latent's output on each chosen feature set) are recorded only for SAEs of
at most this many latents and worlds with at most this many sets: beyond, the table would hold
sets x latents numbers (a generated tree of 16k features: ~10^8) that no report can show."""
PEAK_MODELS_MAX = 64
"""Peak models (a Gaussian mixture chosen by BIC, 40-60 ms a latent on one core) are fitted to at most
this many latents of an SAE: every live latent of the post's SAEs (at most 64 latents), the most-firing
ones of a large one (synthbench-4k: 64 of 1024 per SAE and seed; 256 took 80 of the analysis' 150 s).
The others' peaks come from the smoothed histogram (`count_peaks`), the cross-check every latent gets,
and their detection signals see no model (as a latent with too few firings to fit)."""


def modelled_latents(acts_BK: np.ndarray, live_K: np.ndarray) -> list[int]:
    """The live latents that get a peak model: all of them, or the PEAK_MODELS_MAX that fire most."""
    live = np.flatnonzero(live_K)
    if len(live) <= PEAK_MODELS_MAX:
        return live.tolist()
    firing = (acts_BK[:, live] > 0).mean(axis=0)
    return sorted(live[np.argsort(-firing, kind="stable")[:PEAK_MODELS_MAX]].tolist())


def detail_bytes_per_sample(n_features: int, dim: int, latents: list[int]) -> int:
    """Bytes one held-out sample of one seed takes in the per-latent analyses: its feature
    magnitudes (and the absorption's float64 copy), input, and each SAE's activations and
    reconstruction."""
    return 4 * (3 * n_features + dim + sum(3 * k + 2 * dim for k in latents))


def detail_samples(result: Trained) -> int:
    """How many eval samples the per-latent analyses hold at once (all of them in small worlds)."""
    world = result.world
    per_sample = detail_bytes_per_sample(
        world.n_features, world.config.dim, [s.sae.latents for s in result.stacks]
    )
    return int(min(result.config.train.eval_samples, max(1000, DETAIL_BYTES // per_sample)))


class TrainedStack(Protocol):
    """One trained SAE of every seed, as measuring reads it."""

    config: SAEConfig
    sae: StackedSAE
    tau_SK: torch.Tensor | None
    """The aux loss's final thresholds (the JumpReLU threshold when it uses them)."""


class Trained(Protocol):
    """What measuring reads of a training result. `training.loop.TrainResult` is one; analysis
    stands below training (training's refits use the peak model), so it names the shape it reads
    instead of importing the class."""

    config: ExperimentConfig
    world: World
    seeds: list[int]
    stacks: Sequence[TrainedStack]
    samples: int
    history: Any
    """The logged loss terms per SAE and seed: training/history.py's TrainingHistory (`.run(label, seed).terms`)."""

    @property
    def samples_per_second(self) -> float: ...


def cosine(a_AD: torch.Tensor, b_BD: torch.Tensor) -> torch.Tensor:
    return (
        torch.nn.functional.normalize(a_AD, dim=-1) @ torch.nn.functional.normalize(b_BD, dim=-1).T
    )


def match_latents(decoder_cos_KN: np.ndarray, live: np.ndarray) -> list[Match]:
    """One-to-one matching of live latents to features maximising decoder cosine (Hungarian)."""
    latents = np.flatnonzero(live)
    if latents.size == 0:
        return []
    rows, cols = linear_sum_assignment(-decoder_cos_KN[latents])
    return [
        Match(
            latent=int(latents[r]),
            feature=int(c),
            cos=round(float(decoder_cos_KN[latents[r], c]), 4),
        )
        for r, c in sorted(zip(rows, cols), key=lambda rc: latents[rc[0]])
    ]


def firing_pattern_sets(world: World, matched_features: set[int]) -> list[list[int]]:
    """The feature sets the post's firing tables show: each relevant feature alone, then each
    parent with each child and with all its children."""
    related = {f for rel in world.config.hierarchy for f in (rel.parent, *rel.children)}
    sets = [[f] for f in sorted(matched_features | related)]
    for rel in world.config.hierarchy:
        sets += [sorted([rel.parent, c]) for c in rel.children]
        if len(rel.children) > 1:
            sets.append(sorted([rel.parent, *rel.children]))
    return sets


@torch.no_grad()
def firing_patterns(
    sae: StackedSAE, s: int, world: World, sets: list[list[int]], tau_SK
) -> list[FiringPattern]:
    """Latent activations of SAE s when exactly the given features fire at their magnitudes."""
    f_PN = torch.zeros(len(sets), world.n_features, device=world.magnitudes_N.device)
    for p, features in enumerate(sets):
        f_PN[p, features] = world.magnitudes_N[features]
    x = (f_PN @ world.directions_ND).expand(sae.n_saes, -1, -1)
    h, _ = sae(x, tau_SK)
    return [
        FiringPattern(features=features, activations=[round(float(v), 4) for v in h[s, p]])
        for p, features in enumerate(sets)
    ]


@torch.no_grad()
def measure(result: Trained, clean_cos: float = CLEAN_COS) -> Metrics:
    """Typed metrics without the claims: one run entry per (SAE, seed)."""
    world = result.world
    F_ND = world.directions_ND
    (f_RNB, x_RBD), every_batch = _held_out(result)
    variance = (x_RBD - x_RBD.mean(dim=1, keepdim=True)).pow(2).sum(-1).mean(-1)
    synthbench = _synthbench_scores(result, every_batch)
    cooccur = cooccurring(world.config.hierarchy, world.n_features)
    dead_below = 0.1 * float(world.magnitudes_N.min())
    runs = []
    for stack in result.stacks:
        sae = stack.sae
        h_SBK, x_hat = sae(x_RBD, stack.tau_SK)
        mse_S = (x_hat - x_RBD).pow(2).sum(-1).mean(-1)
        widths = stack.config.matryoshka_widths or [sae.latents]
        width_mse_WS = torch.stack(
            [(sae.decode(h_SBK, w) - x_RBD).pow(2).sum(-1).mean(-1) for w in widths]
        )
        W_enc_SDK, _ = sae.encoder()
        norms_SK = sae.W_dec_SKD.norm(dim=-1)
        for s, seed in enumerate(result.seeds):
            dec_cos = cosine(sae.W_dec_SKD[s], F_ND).cpu().numpy()
            enc_cos = cosine(W_enc_SDK[s].T, F_ND).cpu().numpy()
            acts = h_SBK[s].cpu().numpy()
            # Dead: never writes even a tenth of the weakest feature's magnitude.
            writes = acts.max(axis=0) * norms_SK[s].cpu().numpy()
            live = writes >= dead_below
            matches = match_latents(dec_cos, live)
            clean = [m for m in matches if m.cos >= clean_cos]
            histograms = [
                count_peaks(acts[:, j]) if live[j] else (0, []) for j in range(sae.latents)
            ]
            histogram_peaks = [n for n, _ in histograms]
            models = {
                j: fit_peak_model(acts[:, j], seed=seed) for j in modelled_latents(acts, live)
            }
            sets = firing_pattern_sets(world, {m.feature for m in clean})
            # Every match, clean or broken: leaving a broken one out would call its feature unmatched.
            absorbed = absorption_metrics(
                acts,
                sae.W_dec_SKD[s].cpu().numpy(),
                F_ND.cpu().numpy(),
                f_RNB[s].T.cpu().numpy(),
                {m.feature: m.latent for m in matches},
                np.flatnonzero(live),
                cooccur,
            )
            detection = _detection(
                W_enc_SDK[s].cpu().numpy(),
                sae.W_dec_SKD[s].cpu().numpy(),
                acts,
                models,
                live,
                F_ND.cpu().numpy(),
                f_RNB[s].T.cpu().numpy(),
                stack.sae.tied_encoder,
            )
            runs.append(
                RunMetrics(
                    label=stack.config.label,
                    architecture=stack.config.architecture,
                    seed=seed,
                    decoder_cos=inline_or_array(dec_cos),
                    encoder_cos=inline_or_array(enc_cos),
                    latent_cos=inline_or_array(
                        cosine(sae.W_dec_SKD[s], sae.W_dec_SKD[s]).cpu().numpy()
                    ),
                    decoder_norms=_round(norms_SK[s].cpu().numpy()),
                    matches=matches,
                    learned_features=sorted(m.feature for m in clean),
                    broken_latents=sorted(m.latent for m in matches if m.cos < clean_cos),
                    dead_latents=[int(j) for j in np.flatnonzero(~live)],
                    activation_peaks=[
                        models[j].n_peaks if j in models else histogram_peaks[j]
                        for j in range(sae.latents)
                    ],
                    peak_locations=[
                        [round(p.mean, 4) for p in models[j].peaks]
                        if j in models
                        else histograms[j][1]
                        for j in range(sae.latents)
                    ],
                    histogram_peaks=histogram_peaks,
                    peak_models=[
                        PeakModelRecord.from_json({"latent": int(j), **model.to_json()})
                        for j, model in models.items()
                    ],
                    mse=round(float(mse_S[s]), 6),
                    l0=round(float((h_SBK[s] > 0).float().sum(-1).mean()), 4),
                    explained_variance=round(float(1 - mse_S[s] / variance[s]), 6),
                    width_explained_variance=[
                        round(float(1 - mse[s] / variance[s]), 6) for mse in width_mse_WS
                    ],
                    absorption=_round(absorbed.absorption),
                    full_absorption=_round(absorbed.full_absorption),
                    hedging=_round(absorbed.hedging),
                    firing_patterns=(
                        firing_patterns(sae, s, world, sets, stack.tau_SK)
                        if sae.latents <= FIRING_PATTERNS_MAX and len(sets) <= FIRING_PATTERNS_MAX
                        else []
                    ),
                    **synthbench_fields(synthbench[stack.config.label][s]),
                    **detection,
                )
            )
            drop = _loss_drop(result.history, stack, seed)
            if drop is not None:
                runs[-1].loss_drop, runs[-1].falling_term = round(drop[0], 4), drop[1]
                runs[-1].still_falling = still_falling(drop[0])
    return Metrics(
        name=result.config.name,
        samples=result.samples,
        samples_per_second=round(result.samples_per_second, 1),
        world=WorldMetrics(
            expected_mse=_round(world.expected_mse().numpy()),
            expected_mse_ranking=world.expected_mse_ranking(),
            variance=_round(world.variance().numpy()),
            variance_ranking=world.variance_ranking(),
            feature_cos=inline_or_array(cosine(F_ND, F_ND).cpu().numpy()),
            max_feature_cos=round(max_abs_cos(F_ND.cpu()), 6),
            welch_bound=round(welch_bound(world.n_features, world.config.dim), 6),
            firing_rates=_round(world.marginal_rates().numpy()),
            magnitudes=_round(world.magnitudes_N.cpu().numpy()),
            dim=world.config.dim,
            given_rates=_round(world.rates_N.cpu().numpy()),
            hierarchy=[
                {"parent": rel.parent, "children": list(rel.children), "mode": rel.mode}
                for rel in world.config.hierarchy
            ],
        ),
        runs=runs,
        clean_cos=clean_cos,
    )


def _detection(
    W_enc_DK, W_dec_KD, h_BK, models: dict, live, directions_ND, f_BN, tied: bool
) -> dict:
    """truth_broken, broken_score and detection_signals of one SAE : the detector sees only
    the weights and activations; the truth reads the true features."""
    from .score import load_score_model
    from .signals import signals_of

    K = W_dec_KD.shape[0]
    signals, _ = signals_of(
        W_enc_DK, W_dec_KD, h_BK, [models.get(j, EMPTY) for j in range(K)], tied=tied
    )
    score_K = np.where(live, load_score_model().probability(signals), 0.0)
    truth_K, _, _ = truth_broken(h_BK, W_dec_KD, directions_ND, f_BN, live)
    return {
        "truth_broken": [bool(t) for t in truth_K],
        "broken_score": _round(score_K),
        "detection_signals": {name: _round(value) for name, value in signals.items()},
    }


def synthbench_fields(scores: dict) -> dict:
    """SynthSAEBench's scores of one SAE and seed (the decoder's `mcc` and `uniqueness`, and a
    `FiringTally`'s) as the RunMetrics fields of the same names hold them, rounded."""
    return {
        **{k: round(scores[k], 6) for k in ("mcc", "uniqueness", "precision", "recall", "f1")},
        "shrinkage": round(scores["shrinkage"], 6),
        "sae_l0": round(scores["sae_l0"], 4),
        "true_l0": round(scores["true_l0"], 4),
        "dead_count": scores["dead_count"],
        "absorption_gap": [
            AbsorptionGap(
                parent=g["parent"],
                child=g["child"],
                latent=g["latent"],
                gap=None if g["gap"] is None else round(g["gap"], 6),
            )
            for g in scores["absorption_gap"]
        ],
    }


def _held_out(result: Trained):
    """The held-out samples measuring reads, all drawn here from the eval stream: the detail batch
    (f_RNB dense, x_RBD) the per-latent analyses hold at once, and every eval sample batch by batch
    for SynthSAEBench's metrics. A small world's detail batch is every eval sample: it serves both.
    A large world's metrics stream the eval samples again, STREAM_BYTES at a time (drawn in other
    batch sizes, so they are not the detail batch's samples reused)."""
    world, seeds = result.world, result.seeds
    device = world.directions_ND.device
    eval_samples, detail = result.config.train.eval_samples, detail_samples(result)
    detail_batch = next(held_out_batches(world, seeds, detail, detail, EVAL_STREAM, device))
    if detail >= eval_samples:
        return detail_batch, iter([detail_batch])
    batch = max(256, STREAM_BYTES // (4 * len(seeds) * world.n_features))
    return detail_batch, held_out_batches(world, seeds, eval_samples, batch, EVAL_STREAM, device)


@torch.no_grad()
def _synthbench_scores(result: Trained, batches) -> dict[str, list[dict]]:
    """SynthSAEBench's metrics (analysis/scale.py) of every SAE and seed, by label then seed
    position, over `batches` of (f_RNB, x_RBD) held-out samples (see `_held_out`)."""
    world = result.world
    F_ND = world.directions_ND
    edges = hierarchy_edges(world)
    tallies, decoders = {}, {}
    for stack in result.stacks:
        label = stack.config.label
        cos_SKF = [
            cosine(stack.sae.W_dec_SKD[s], F_ND).cpu().numpy() for s in range(len(result.seeds))
        ]
        decoders[label] = [decoder_scores(cos) for cos in cos_SKF]
        tallies[label] = [
            FiringTally(d.best_feature_K, edges, parent_latents(cos, edges))
            for d, cos in zip(decoders[label], cos_SKF)
        ]
    for f_batch_RNB, x_batch_RBD in batches:
        for stack in result.stacks:
            h_SBK, x_hat_SBD = stack.sae(x_batch_RBD, stack.tau_SK)
            for s, tally in enumerate(tallies[stack.config.label]):
                tally.add(h_SBK[s], f_batch_RNB[s].T, x_batch_RBD[s], x_hat_SBD[s])
    return {
        label: [
            {"mcc": d.mcc, "uniqueness": d.uniqueness, **t.scores()}
            for d, t in zip(decoders[label], tallies[label])
        ]
        for label in tallies
    }


def latent_activations(result: Trained, samples: int = 50_000) -> dict[str, np.ndarray]:
    """Held-out activations [samples, K] of every SAE, keyed "LABEL-seedN", for histograms.
    One draw of the held-out stream serves every stack; a large world draws fewer samples, as
    many as fit in DETAIL_BYTES."""
    world = result.world
    per_sample = detail_bytes_per_sample(
        world.n_features, world.config.dim, [s.sae.latents for s in result.stacks]
    )
    samples = int(min(samples, max(1000, DETAIL_BYTES // per_sample)))
    stream = DataStream(
        world, result.seeds, samples, world.directions_ND.device, offset=EVAL_STREAM, chunk=1
    )
    x_RBD = world.inputs(stream.next())
    out = {}
    with torch.no_grad():
        for stack in result.stacks:
            h = stack.sae(x_RBD, stack.tau_SK)[0].cpu().numpy()
            out.update(
                {f"{stack.config.label}-seed{seed}": h[s] for s, seed in enumerate(result.seeds)}
            )
    return out


def _loss_drop(history, stack, seed: int) -> tuple[float, str] | None:
    """convergence.loss_drop of SAE `stack` at `seed`, from the training loop's logged steps."""
    runs = [r for r in history.runs if r.label == stack.config.label and r.seed == seed]
    if not runs:  # an SAE built by hand, never trained here: nothing logged to judge
        return None
    return loss_drop(runs[0].terms, stack.sae.loss_weights(stack.config, 0.0))


def _round(a: np.ndarray, digits: int = 4):
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()
