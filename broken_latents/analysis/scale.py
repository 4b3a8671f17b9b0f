"""The metrics SynthSAEBench reports (SAELens' `sae_lens.synthetic.evals`), streamed over held-out
batches so that they fit at 16k features and 4k latents, plus the absorption gap per hierarchy edge.

The definitions are SAELens', so the numbers compare with its table (an optional test and
benchmarks/saelens_eval_check.py check that they equal its evaluator's on the same SAE and samples):
- cosines: rows normalised with their norm clamped at 1e-8 (a zero row has cosine 0 with everything)
- mcc: Hungarian matching of latents to features maximising |cos| (every latent, dead ones too),
  mean |cos| over the min(K, F) matched pairs
- uniqueness: number of distinct best-|cos| features over the latents, divided by K
- precision, recall, f1: each latent is a detector of its best-|cos| feature (latent fires: h != 0;
  feature fires: f > 0); per latent TP / FP / FN over all samples, a ratio with a zero denominator
  is 0; the mean over latents
- sae_l0, true_l0: mean number of latents with h != 0 / features with f > 0 per sample
- dead_count: latents with h != 0 on no sample
- shrinkage: mean of ||x_hat|| / ||x|| over samples with ||x|| > 1e-6
- explained_variance: 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2), sums in float64
And ours:
- absorption_gap per parent -> child edge: P(parent latent on | parent on, child off)
  - P(parent latent on | parent on, child on), the parent latent being the latent whose decoder
  has the largest (signed) cosine with the parent's direction. A latent that stays off when the
  child fires, because a child latent absorbed the parent there, gives a gap near 1; a clean
  parent latent gives 0. None where either condition never occurs in the samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

MIN_INPUT_NORM = 1e-6
"""SAELens' ShrinkageCalculator skips inputs with a smaller norm: the ratio is undefined there."""
NORM_CLAMP = 1e-8
"""SAELens' `cosine_similarities` clamps row norms here, so a zero row has cosine 0."""


def unit_rows(a_AD: torch.Tensor) -> torch.Tensor:
    return a_AD / a_AD.norm(dim=-1, keepdim=True).clamp(min=NORM_CLAMP)


@dataclass
class DecoderScores:
    """What depends on the decoder alone."""

    mcc: float
    uniqueness: float
    best_feature_K: np.ndarray
    """Per latent, the feature with the largest |cos| with its decoder row (the one F1 scores it on)."""


def decoder_scores(cos_KF: np.ndarray) -> DecoderScores:
    """MCC and uniqueness from the (signed) decoder-feature cosines [K, F]. The Hungarian matching
    runs on the full K x F matrix (float64 inside scipy: 512 MiB at K = 4096, F = 16384, about 3 s)."""
    abs_KF = np.abs(np.asarray(cos_KF, dtype=np.float32))
    K = abs_KF.shape[0]
    if K == 0:
        return DecoderScores(0.0, 0.0, np.zeros(0, dtype=np.int64))
    rows, cols = linear_sum_assignment(abs_KF, maximize=True)
    best = abs_KF.argmax(axis=1)
    return DecoderScores(float(abs_KF[rows, cols].mean()), len(np.unique(best)) / K, best)


def hierarchy_edges(world) -> list[tuple[int, int]]:
    """Every parent -> child edge of the world's hierarchy: the explicit relations (parents
    top-down), then those of a generated tree (`world.tree_roots`, where the world has one; its
    organisational nodes, without a feature, give no edge)."""
    edges = [(rel.parent, child) for rel in world.top_down() for child in rel.children]
    todo = list(getattr(world, "tree_roots", None) or [])
    while todo:
        node = todo.pop(0)
        edges += [
            (node.feature, child.feature)
            for child in node.children
            if node.feature is not None and child.feature is not None
        ]
        todo += node.children
    return list(dict.fromkeys(edges))


def parent_latents(cos_KF: np.ndarray, edges: list[tuple[int, int]]) -> np.ndarray:
    """Per edge, the latent whose decoder points most along the parent (largest signed cosine)."""
    parents = np.array([p for p, _ in edges], dtype=np.int64)
    return (
        np.asarray(cos_KF)[:, parents].argmax(axis=0) if len(edges) else np.zeros(0, dtype=np.int64)
    )


class FiringTally:
    """Streaming counts of one SAE over held-out batches: add(...) per batch, then scores(). Memory
    is a few vectors of length K plus one batch's [B, K] masks, whatever the number of samples."""

    def __init__(
        self, best_feature_K: np.ndarray, edges: list[tuple[int, int]], parent_latent_E: np.ndarray
    ):
        K = len(best_feature_K)
        self.best_K = torch.as_tensor(best_feature_K, dtype=torch.long)
        self.edges = edges
        self.parents_E = torch.tensor([p for p, _ in edges], dtype=torch.long)
        self.children_E = torch.tensor([c for _, c in edges], dtype=torch.long)
        self.parent_latent_E = torch.as_tensor(parent_latent_E, dtype=torch.long)
        self.tp_K, self.fp_K, self.fn_K = (torch.zeros(K, dtype=torch.float64) for _ in range(3))
        self.fired_K = torch.zeros(K, dtype=torch.bool)
        self.samples = 0
        self.sae_active = self.true_active = 0.0
        self.shrinkage_sum, self.shrinkage_count = 0.0, 0
        self.sum_x_D: torch.Tensor | None = None
        self.sum_sq_norm = self.sum_sq_residual = 0.0
        # Per edge: [parent on & child off, and the parent latent on there, parent & child on, latent on].
        self.edge_counts_4E = torch.zeros(4, len(edges), dtype=torch.float64)

    @torch.no_grad()
    def add(
        self, h_BK: torch.Tensor, f_BN: torch.Tensor, x_BD: torch.Tensor, x_hat_BD: torch.Tensor
    ) -> None:
        """One batch: latent activations, true feature magnitudes, inputs, reconstructions."""
        h_BK, f_BN, x_BD, x_hat_BD = (t.detach().cpu() for t in (h_BK, f_BN, x_BD, x_hat_BD))
        fires_BK = h_BK != 0
        truth_BK = f_BN[:, self.best_K] > 0
        # FP and FN from the totals: one pass over the [B, K] masks instead of three.
        tp_K, fired_K, true_K = (
            torch.count_nonzero(m, dim=0) for m in (fires_BK & truth_BK, fires_BK, truth_BK)
        )
        self.tp_K += tp_K
        self.fp_K += fired_K - tp_K
        self.fn_K += true_K - tp_K
        self.fired_K |= fired_K > 0
        self.samples += h_BK.shape[0]
        self.sae_active += float(fired_K.sum())
        self.true_active += float(torch.count_nonzero(f_BN > 0))
        x64, x_hat64 = x_BD.double(), x_hat_BD.double()
        norms_B = x64.norm(dim=-1)
        valid_B = norms_B > MIN_INPUT_NORM
        self.shrinkage_sum += float((x_hat64.norm(dim=-1)[valid_B] / norms_B[valid_B]).sum())
        self.shrinkage_count += int(valid_B.sum())
        self.sum_x_D = x64.sum(0) if self.sum_x_D is None else self.sum_x_D + x64.sum(0)
        self.sum_sq_norm += float(x64.pow(2).sum())
        self.sum_sq_residual += float((x64 - x_hat64).pow(2).sum())
        if self.edges:
            parent_BE, child_BE = f_BN[:, self.parents_E] > 0, f_BN[:, self.children_E] > 0
            latent_BE = fires_BK[:, self.parent_latent_E]
            alone_BE, both_BE = parent_BE & ~child_BE, parent_BE & child_BE
            self.edge_counts_4E += torch.stack(
                [
                    alone_BE.sum(0),
                    (alone_BE & latent_BE).sum(0),
                    both_BE.sum(0),
                    (both_BE & latent_BE).sum(0),
                ]
            )

    def scores(self) -> dict:
        """precision, recall, f1, sae_l0, true_l0, dead_count, shrinkage, explained_variance, absorption_gap."""
        tp, fp, fn = self.tp_K, self.fp_K, self.fn_K
        precision_K = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.zeros_like(tp))
        recall_K = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
        total_K = precision_K + recall_K
        f1_K = torch.where(
            total_K > 0,
            2 * precision_K * recall_K / total_K.clamp(min=1e-300),
            torch.zeros_like(tp),
        )
        n = max(self.samples, 1)
        mean_x = (
            self.sum_x_D / n if self.sum_x_D is not None else torch.zeros(1, dtype=torch.float64)
        )
        variance = self.sum_sq_norm / n - float(mean_x.pow(2).sum())
        mse = self.sum_sq_residual / n
        explained = (1.0 if mse < 1e-10 else 0.0) if variance < 1e-10 else 1 - mse / variance
        gaps = []
        for e, (parent, child) in enumerate(self.edges):
            alone, alone_on, both, both_on = self.edge_counts_4E[:, e].tolist()
            gap = alone_on / alone - both_on / both if alone and both else None
            gaps.append(
                {
                    "parent": int(parent),
                    "child": int(child),
                    "gap": gap,
                    "latent": int(self.parent_latent_E[e]),
                }
            )
        mean = (lambda v_K: float(v_K.mean())) if len(tp) else (lambda v_K: 0.0)
        return {
            "precision": mean(precision_K),
            "recall": mean(recall_K),
            "f1": mean(f1_K),
            "sae_l0": self.sae_active / n,
            "true_l0": self.true_active / n,
            "dead_count": int((~self.fired_K).sum()),
            "shrinkage": self.shrinkage_sum / self.shrinkage_count if self.shrinkage_count else 0.0,
            "explained_variance": explained,
            "absorption_gap": gaps,
        }
