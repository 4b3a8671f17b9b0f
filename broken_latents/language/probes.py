"""Ground truth from a network: per concept, a linear probe on the activations gives its direction.

A concept the network does not represent linearly (test accuracy or balanced accuracy below the
bar) is dropped, and the result says so. The probes are L2-regularised logistic regressions, all
concepts at once in one full-batch L-BFGS fit (sklearn's, one concept at a time, took 90 s on
20k tokens of 39 concepts; this takes seconds). The direction is the unit weight vector in the
activations' own coordinates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

L2 = 1e-3
"""Weight of the mean squared probe weight (standardised inputs) beside the mean logistic loss."""


@dataclass
class Probe:
    concept: int
    accuracy: float
    """Test accuracy."""
    balanced_accuracy: float
    """Mean of the test accuracy on active and on inactive tokens."""
    rate: float
    """Share of test tokens where the concept is active."""
    kept: bool
    why_dropped: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ProbeResult:
    probes: list[Probe]
    directions_CD: np.ndarray
    """Unit probe directions of every concept [C, D] (a dropped concept's too, for the record)."""
    weights_CD: np.ndarray | None = None
    """Each probe in the activations' own coordinates: its score is x . weights[c] + bias[c] (> 0: active)."""
    bias_C: np.ndarray | None = None

    @property
    def kept(self) -> list[int]:
        return [p.concept for p in self.probes if p.kept]


def fit_probes(
    x_ND: np.ndarray, labels_NC: np.ndarray, tokens: int, min_accuracy: float, seed: int = 0
) -> ProbeResult:
    """Train every concept's probe on `tokens` rows drawn at random, test on up to as many others."""
    n, C = labels_NC.shape
    order = np.random.default_rng(seed).permutation(n)
    train_rows = np.sort(order[: min(tokens, n // 2)])
    test_rows = np.sort(order[len(train_rows) : len(train_rows) + tokens])
    x_train = torch.from_numpy(np.asarray(x_ND[train_rows], dtype=np.float64))
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-8  # L-BFGS converges far faster standardised
    x_train = (x_train - mean) / scale
    x_test = (torch.from_numpy(np.asarray(x_ND[test_rows], dtype=np.float64)) - mean) / scale
    y_train = torch.from_numpy(np.asarray(labels_NC[train_rows], dtype=np.float64))
    y_test = np.asarray(labels_NC[test_rows]).astype(bool)

    # Class-balanced: active and inactive tokens weigh half each, so a concept on 0.5% of the tokens
    # is not fitted as "never" (unweighted, the rarest words' balanced accuracy was 0.90-0.94).
    rate_C = y_train.mean(0).clamp(1e-6, 1 - 1e-6)
    weights = torch.where(y_train > 0, 0.5 / rate_C, 0.5 / (1 - rate_C)) / len(y_train)
    W_DC = torch.zeros(x_train.shape[1], C, dtype=torch.float64, requires_grad=True)
    b_C = torch.zeros(C, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([W_DC, b_C], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        logits = x_train @ W_DC + b_C
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, y_train, reduction="none")
            * weights
        ).sum()
        loss = loss + L2 * W_DC.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        predicted = ((x_test @ W_DC + b_C) > 0).numpy()
        # w . (x - mean) / scale: in the activations' coordinates the weight is w / scale.
        W_raw = (W_DC / scale[:, None]).T.numpy()
        b_raw = (b_C - (mean / scale) @ W_DC).numpy()
    probes, directions = [], np.zeros_like(W_raw)
    for c in range(C):
        y, p = y_test[:, c], predicted[:, c]
        if y.all() or not y.any():
            probes.append(
                Probe(
                    c, 0.0, 0.0, float(y.mean()), False, "never or always active in the test tokens"
                )
            )
            continue
        accuracy = float((p == y).mean())
        balanced = float(0.5 * (p[y].mean() + (~p[~y]).mean()))
        directions[c] = W_raw[c] / max(np.linalg.norm(W_raw[c]), 1e-12)
        kept = accuracy >= min_accuracy and balanced >= min_accuracy
        why = "" if kept else f"accuracy {accuracy:.3f}, balanced {balanced:.3f} < {min_accuracy}"
        probes.append(
            Probe(c, round(accuracy, 4), round(balanced, 4), round(float(y.mean()), 4), kept, why)
        )
    return ProbeResult(probes, directions.astype(np.float32), W_raw, b_raw)


def mean_difference_directions(x_ND: np.ndarray, labels_NC: np.ndarray) -> np.ndarray:
    """Unit E[x | active] - E[x | inactive] per concept [C, D]: the direction a concept adds to the
    activations on average, the comparison for the probe's (which also turns away from correlated noise)."""
    x = np.asarray(x_ND, dtype=np.float64)
    labels = np.asarray(labels_NC).astype(bool)
    out = np.zeros((labels.shape[1], x.shape[1]))
    for c in range(labels.shape[1]):
        if labels[:, c].any() and not labels[:, c].all():
            d = x[labels[:, c]].mean(0) - x[~labels[:, c]].mean(0)
            out[c] = d / np.linalg.norm(d)
    return out.astype(np.float32)


def own_directions(
    x_ND: np.ndarray, labels_NC: np.ndarray, edges: list[tuple[int, int]]
) -> np.ndarray:
    """Per concept, what it adds beyond its parent: the unit difference between its class mean and the
    mean of the rows where its parent is active without it (a root: of the rows where it is inactive).

    The plain difference of class means of a child includes its parent (a child is only ever active with
    it): at block 2 of the language network a word's is its subtopic's at cos 0.99, so a word latent
    that absorbed its subtopic would look clean against it. This is the toy worlds' child direction."""
    x = np.asarray(x_ND, dtype=np.float64)
    labels = np.asarray(labels_NC).astype(bool)
    parent_of = {c: p for p, c in edges}
    out = np.zeros((labels.shape[1], x.shape[1]))
    for c in range(labels.shape[1]):
        active = labels[:, c]
        p = parent_of.get(c)
        reference = ~active if p is None else labels[:, p] & ~active
        if (
            not reference.any()
        ):  # the parent never appears without this child: compare with the rest
            reference = ~active
        if active.any() and reference.any():
            d = x[active].mean(0) - x[reference].mean(0)
            out[c] = d / max(np.linalg.norm(d), 1e-12)
    return out.astype(np.float32)


def edges_from_labels(labels_NC: np.ndarray) -> list[tuple[int, int]]:
    """The hierarchy the labels imply: p is c's parent when c is never active without p and p is the
    rarest such concept (its closest ancestor); concepts active on the same rows are left unrelated."""
    active = np.asarray(labels_NC, dtype=bool)
    counts = active.sum(0)
    joint = active.T.astype(np.int64) @ active.astype(np.int64)  # joint[c, p] = rows with both
    edges = []
    for c in range(active.shape[1]):
        if counts[c] == 0:
            continue
        ancestors = [
            p
            for p in range(active.shape[1])
            if p != c and joint[c, p] == counts[c] and counts[p] > counts[c]
        ]
        if ancestors:
            edges.append((min(ancestors, key=lambda p: counts[p]), c))
    return edges
