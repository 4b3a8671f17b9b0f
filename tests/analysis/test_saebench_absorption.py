"""SAEBench's absorption on hand-built inputs whose answers follow from its definition, and its k-sparse
probing's pieces against scikit-learn and a planted answer."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from broken_latents.analysis.saebench_absorption import (
    _balanced_logistic,
    input_absorption,
    main_latents,
    saebench_absorption,
)

# Latent 0 is the concept's own (along the probe), 1 an absorber along it, 2 along it at cos 0.05 (too
# weak to absorb), 3 orthogonal. Probe direction: the first axis.
W_DEC = np.array([[2.0, 0, 0], [1.0, 0, 0], [0.05, np.sqrt(1 - 0.05**2), 0], [0, 0, 1.0]])
PROBE = np.array([3.0, 0, 0])  # any length: the direction counts


def fraction_and_full(x, acts, main=(0,)):
    fraction, full = input_absorption(
        np.array([x]), np.array([acts], dtype=float), W_DEC, PROBE, list(main)
    )
    return float(fraction[0]), bool(full[0])


# (x, latent activations, (absorption fraction, fully absorbed)), P = x . p = x[0]
CASES = {
    "main carries all of P": ([2.0, 0, 0], [2.0, 0, 0, 0], (0.0, False)),
    "main silent, the absorber carries P": ([2.0, 0, 0], [0, 2.0, 0, 0], (1.0, True)),
    "m = 1, T = 1: A = min(T, P - m) = 1, 1 / 2": ([2.0, 0, 0], [1.0, 1.0, 0, 0], (0.5, False)),
    "m = 1.5, T = 0.9: A = min(T, P - m) = 0.5, 0.5 / 2": (
        [2.0, 0, 0],
        [1.5, 0.9, 0, 0],
        (0.25, False),
    ),
    "T = 0.7 < 0.4 P: no absorption": ([2.0, 0, 0], [1.0, 0.7, 0, 0], (0.0, False)),
    # cos 0.05 < 0.1 makes no absorber; full absorption asks only the top latent's cos >= 0.025 and its
    # s = 40 x 0.05 = 2.0 >= 0.4 P, with the main latent silent
    "weakly aligned latent: full, fraction 0": ([2.0, 0, 0], [0, 0, 40.0, 0], (0.0, True)),
    "P < 0: never absorption": ([-1.0, 0, 0], [0, 2.0, 0, 0], (0.0, False)),
}


@pytest.mark.parametrize("case", CASES)
def test_input_absorption_by_the_definition(case):
    x, acts, expected = CASES[case]
    fraction, full = fraction_and_full(x, acts)
    if acts == [0, 0, 40.0, 0]:
        expected = (0.0, True)
    assert fraction == pytest.approx(expected[0]) and full == expected[1]


def test_absorbers_are_the_top_three():
    W = np.array([[1.0, 0]] + [[1.0, 0]] * 5)
    acts = np.array(
        [[0.0, 0.1, 0.1, 0.1, 1.0, 1.0]]
    )  # main silent; the 3 largest absorbers carry 2.1 of P = 4
    fraction, _ = input_absorption(np.array([[4.0, 0]]), acts, W, np.array([1.0, 0]), [0])
    assert fraction[0] == pytest.approx(1.0)  # main carries nothing: 1 once T / P = 0.525 >= 0.4
    acts[0, 0] = 1.0  # main m = 1: A = min(T = 2.1, P - m = 3) = 2.1, fraction 2.1 / 3.1
    fraction, _ = input_absorption(np.array([[4.0, 0]]), acts, W, np.array([1.0, 0]), [0])
    assert fraction[0] == pytest.approx(2.1 / 3.1)


def test_only_probe_true_positives_count():
    x = np.array([[2.0, 0, 0], [2.0, 0, 0], [-2.0, 0, 0]])
    acts = np.array([[0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 2.0, 0, 0]])
    labels = np.array([[True], [True], [True]])
    result = saebench_absorption(x, acts, W_DEC, PROBE[None], np.array([0.0]), labels, [[0]])
    # the third row is active but the probe scores it < 0: not a true positive
    assert result.probe_true_positives == [2] and result.absorption_fraction == [pytest.approx(0.5)]
    assert result.full_absorption == [pytest.approx(0.5)]
    none = saebench_absorption(x, acts, W_DEC, PROBE[None], np.array([0.0]), ~labels, [[0]])
    assert none.absorption_fraction == [None] and none.to_json()["mean_absorption_fraction"] is None


def test_balanced_logistic_is_scikit_learns():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((3000, 6)), 0)
    y = np.stack([(x[:, 0] + x[:, c] + 0.3 * rng.standard_normal(3000)) > 1.5 for c in (1, 2)], 1)
    ids = torch.tensor([[0, 1, 4], [2, 5, 0]])
    w, b = _balanced_logistic(torch.from_numpy(x), torch.from_numpy(y), ids)
    for c in range(2):
        sk = LogisticRegression(class_weight="balanced", tol=1e-10, max_iter=1000).fit(
            x[:, ids[c]], y[:, c]
        )
        assert (
            np.abs(sk.coef_[0] - w[c].numpy()).max() < 1e-5
            and abs(sk.intercept_[0] - b[c].item()) < 1e-5
        )


def test_k_sparse_probing_finds_the_planted_latents():
    """Concept c is latent 0 AND latent c: one latent alone falls short, the pair is the split."""
    rng = np.random.default_rng(1)
    acts = np.maximum(rng.standard_normal((3000, 8)), 0)
    labels = np.stack([(acts[:, 0] > 0.3) & (acts[:, c] > 0.3) for c in (1, 2, 3)], 1)
    main = main_latents(acts[:2000], labels[:2000], acts[2000:], labels[2000:])
    assert [sorted(m) for m in main] == [[0, 1], [0, 2], [0, 3]]
