"""The CPU fast path: one compiled call computes every gradient of an SAE stack for a batch.

Same math as `fastpath.py` (hand-derived gradients in feature space, checked against autograd
in tests/engine/test_fastpath.py), as loops compiled by numba instead of ~40 array calls: at toy sizes
(K = 5 latents, N = 20 features) each numpy call costs more in overhead than its arithmetic.
Every loop over the batch is innermost and contiguous, so it runs in SIMD lanes; a first try
that walked sample by sample over the nonzero features was 4x slower despite doing less work.
Each gradient is a sum over the batch of per-sample coefficients times (x_i - b) plus terms in
W: the coefficients of one parameter are added up per sample first, so only K + 1 rows (tied)
or 2K + 1 (untied) go through f (block by block) and through F (once, after the batch).

The kernel runs single-threaded and releases the GIL, so the sampling thread keeps the other core.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from .fastpath import Architecture, WorldGeometry, term_weights

EPS = 1e-12  # as torch.nn.functional.normalize


# Reassociation lets LLVM vectorise the sums over the batch; no "nnan"/"ninf": training relies
# on NaN and inf surviving to its finiteness check.
FAST_MATH = {"reassoc", "contract", "nsz"}


BLOCK = 1024
"""Samples per pass over the scratch rows: their size stays fixed whatever the batch, and a
4096 batch runs 1.4x faster in four blocks than in one (its rows no longer fit the L2 cache).
Smaller blocks were slower: each block pays several microseconds of calls and slicing."""


@numba.njit(cache=True, nogil=True, inline="always")
def _typed(value, like):
    """`value` in the dtype of the array `like`: numba makes Python floats float64, and one
    float64 constant in a float32 loop converts every element and halves the SIMD lanes.
    (A cast, not a one-element array: an allocation per constant cost ~10% of a call.)"""
    return like.dtype.type(value)


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _combine(out, f, i0, n_i, coefficients, offset):
    """out[i] = offset + sum_n coefficients[n] * f[n, i0 + i] for i < n_i: a product through f.
    Two rows of f per pass halve the loads and stores of `out`. (Rows are sliced, not indexed
    as f[n, i0 + i]: numba cannot tell i0 + i is not negative, checks it per element and the
    loop no longer vectorises, 5x slower.)"""
    N = f.shape[0]
    for i in range(n_i):
        out[i] = offset
    for n in range(0, N - 1, 2):
        c0, c1 = coefficients[n], coefficients[n + 1]
        row0, row1 = f[n, i0 : i0 + n_i], f[n + 1, i0 : i0 + n_i]
        for i in range(n_i):
            out[i] += c0 * row0[i] + c1 * row1[i]
    if N % 2:
        c0, row0 = coefficients[N - 1], f[N - 1, i0 : i0 + n_i]
        for i in range(n_i):
            out[i] += c0 * row0[i]


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _add_products(out_RN, A_RB, f, i0, n_i):
    """out[r, n] += sum_{i < n_i} A[r, i] f[n, i0 + i]. Two rows of A per pass over f[n]: one
    dot product at a time waits on its single running sum; two keep twice the SIMD units busy."""
    R, N = A_RB.shape[0], f.shape[0]
    for n in range(N):
        fn = f[n, i0 : i0 + n_i]
        for r in range(0, R - 1, 2):
            acc0 = _typed(0.0, A_RB)
            acc1 = _typed(0.0, A_RB)
            for i in range(n_i):
                acc0 += A_RB[r, i] * fn[i]
                acc1 += A_RB[r + 1, i] * fn[i]
            out_RN[r, n] += acc0
            out_RN[r + 1, n] += acc1
        if R % 2:
            acc = _typed(0.0, A_RB)
            for i in range(n_i):
                acc += A_RB[R - 1, i] * fn[i]
            out_RN[R - 1, n] += acc


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _products_over_D(out_RN, A_RD, B_ND):
    """out[r, n] = A_r . B_n. Plain 2D indexing: a slice per dot product costs two atomic
    reference counts, which made these few hundred short dots cost more than the whole batch."""
    for r in range(A_RD.shape[0]):
        for n in range(B_ND.shape[0]):
            acc = _typed(0.0, A_RD)
            for d in range(A_RD.shape[1]):
                acc += A_RD[r, d] * B_ND[n, d]
            out_RN[r, n] = acc


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _small_products(W, b_1D, W_enc_DK, b_enc, F_ND, tied, M, E, W_enc_KD, q, c, P, norm, bF):
    """The per-SAE products over D: M = W F^T, q = W b, P = W W^T, b F^T and, untied, E = W_enc^T F^T
    and c = b_enc - W_enc^T b. Returns ||b||^2. (b_1D: b as a [1, D] view.)"""
    K = W.shape[0]
    _products_over_D(M, W, F_ND)
    _products_over_D(q, W, b_1D)
    _products_over_D(P, W, W)
    _products_over_D(bF, b_1D, F_ND)
    for k in range(K):
        norm[k] = math.sqrt(P[k, k])
    if not tied:
        W_enc_KD[:] = W_enc_DK.T
        _products_over_D(E, W_enc_KD, F_ND)
        _products_over_D(c, W_enc_KD, b_1D)
        for k in range(K):
            c[k, 0] = b_enc[k] - c[k, 0]
    bb = _typed(0.0, W)
    for d in range(b_1D.shape[1]):
        bb += b_1D[0, d] * b_1D[0, d]
    return bb


class Weights(NamedTuple):
    """An SAE stack's parameters as the kernel reads them (arrays of one dtype)."""

    W_dec_SKD: np.ndarray
    b_dec_SD: np.ndarray
    W_enc_SDK: np.ndarray
    """[S, 0, 0] for a tied SAE."""
    b_enc_SK: np.ndarray
    """[S, 0] for a tied SAE."""
    threshold_SK: np.ndarray
    """h = pre * [pre > threshold]: zeros for ReLU; JumpReLU's learned or aux threshold."""


class Gradients(NamedTuple):
    """Where the kernel writes d(loss)/d(parameter); the untied ones and g_log_threshold_SK
    are [S, 0...] where they do not apply."""

    W_dec_SKD: np.ndarray
    b_dec_SD: np.ndarray
    W_enc_SDK: np.ndarray
    b_enc_SK: np.ndarray
    log_threshold_SK: np.ndarray


class Loss(NamedTuple):
    """What the loss is: the SAE's form and the terms' weights."""

    tied: bool
    l1_weighted: bool
    """L1 of h_k weighted by ||W_dec_k||."""
    learned_threshold: bool
    bandwidth: float
    """JumpReLU's straight-through window around a learned threshold."""
    l1: float
    aux_lambda: float
    """0: no aux loss."""


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def stack_gradients(
    f_SNB,
    F_ND,
    G_NN,
    orthonormal,
    weights,
    loss,
    tau_SK,
    nesting_3KK,
    want_loss,
    grads,
    h_max_SK,
    losses_S3,
):
    """Write d(loss)/d(param) of every SAE s of the stack into `grads`, the batch max of each
    latent into h_max_SK and, if want_loss, (mse, l1, prefix_mse) into losses_S3.

    loss = mean_b ||x_hat - x||^2 + l1 * mean_b sum_k w_k h_k + aux_lambda * aux, as fastpath.py;
    Matryoshka: the squared error summed over the prefixes instead. nesting_3KK[0] = N with
    N[k, j] = n_max(k, j), n_k the number of prefixes that hold latent k, so n_k = N[k, k] and
    the number of widths is N[0, 0] (all ones for a plain SAE); [1] and [2] are scratch for
    P * N and P * (N - 1) (passed in: an allocation per call costs as much as a few loops here).
    tau_SK is the aux loss's threshold.

    The math splits into the pieces below: per block of BLOCK samples, the forward pass
    (`_forward`), ||x - b||^2 (`_squared_residuals`), the error each decoder row sees
    (`_decoder_errors`), and each loss term's per-sample coefficient rows (`_mse_l1_rows`,
    `_aux_rows`); their sums over the batch (`_batch_sums`) go through F once (`_through_features`),
    and the parameters' gradients add the terms in W (`_decoder_gradient`, `_bias_gradient`).
    Each gradient is a sum over the batch of per-sample coefficients times (x_i - b), plus terms
    in W: the coefficients of one parameter are added up per sample first (rows `dec`, `enc` and
    `bias`), so only those few rows go through f (block by block) and F (once). Every loop over
    a block is innermost and contiguous, so it runs in SIMD lanes."""
    S, N, B = f_SNB.shape
    K, D = weights.W_dec_SKD.shape[1], weights.W_dec_SKD.shape[2]
    tied, aux = loss.tied, loss.aux_lambda > 0.0
    N_KK, PN, PN_prefix = nesting_3KK[0], nesting_3KK[1], nesting_3KK[2]
    nested = N_KK[0, 0] > 1
    dtype = f_SNB.dtype
    two_over_B = _typed(2.0 / B, f_SNB)
    aux_scale = _typed(2.0 * loss.aux_lambda / (B * K), f_SNB)

    # Per SAE: products over D (see _small_products).
    M = np.empty((K, N), dtype)
    E = np.empty((K, N), dtype)
    W_enc_KD = np.empty((K, D), dtype)
    q_K1 = np.empty((K, 1), dtype)
    c_K1 = np.empty((K, 1), dtype)
    P = np.empty((K, K), dtype)
    norm = np.empty(K, dtype)
    bF_1N = np.empty((1, N), dtype)
    l1_w = np.empty(K, dtype)  # d(l1 term)/dh_k
    # Scratch for one block of samples.
    xW = np.empty((K, BLOCK), dtype)
    pre = np.empty((K, BLOCK), dtype)
    h = np.empty((K, BLOCK), dtype)
    We = np.empty((K, BLOCK), dtype)  # W_k . e, the error seen by each decoder row
    r2 = np.empty(BLOCK, dtype)  # ||x - b||^2
    scratch = np.empty(BLOCK, dtype)
    # The rows that go through f and F: dec (K), the untied encoder's enc (K), bias (1).
    rows = K + 1 if tied else 2 * K + 1
    C = np.empty((rows, BLOCK), dtype)
    dec = C[:K]  # d(loss)/dW_k = sum_i dec_ki (x_i - b) + terms in W
    enc = np.empty((K, BLOCK), dtype) if tied else C[K : 2 * K]  # d(loss)/d(pre_k)
    bias = C[rows - 1]  # d(loss)/db = sum_i bias_i (x_i - b) + terms in W
    # Sums over the batch.
    Cf = np.empty((rows, N))  # sum_i C[row, i] f_i
    totals = np.empty(rows)  # sum_i C[row, i]
    hh = np.empty((K, K))
    sum_h = np.empty(K)
    sum_enc = np.empty(K)
    sum_c1 = np.empty(K)
    g_cos_sum = np.empty(K)
    grad_h_near = np.empty(K)  # d(loss)/dh summed where pre is within the JumpReLU's bandwidth
    row_weight = np.empty(K)  # d(loss)/dW_k's term in W_k itself
    X = np.empty((rows, D))  # X[row] = sum_i C[row, i] (x_i - b)

    for s in range(S):
        f, W, b, theta_K = (
            f_SNB[s],
            weights.W_dec_SKD[s],
            weights.b_dec_SD[s],
            weights.threshold_SK[s],
        )
        bb = _small_products(
            W,
            b.reshape(1, D),
            weights.W_enc_SDK[s],
            weights.b_enc_SK[s],
            F_ND,
            tied,
            M,
            E,
            W_enc_KD,
            q_K1,
            c_K1,
            P,
            norm,
            bF_1N,
        )
        q, c = q_K1[:, 0], c_K1[:, 0]
        for k in range(K):
            l1_w[k] = _typed(loss.l1 / B, f_SNB) * (
                norm[k] if loss.l1_weighted else _typed(1.0, f_SNB)
            )
        h_max_SK[s] = 0.0
        Cf[:] = 0.0
        hh[:] = 0.0
        for sums in (totals, sum_h, sum_enc, sum_c1, g_cos_sum, grad_h_near):
            sums[:] = 0.0
        mse = prefix_mse = 0.0
        if nested:  # P * N, and P * (N - 1) for the prefixes' loss alone
            for k in range(K):
                for j in range(K):
                    PN[k, j] = P[k, j] * N_KK[k, j]
                    PN_prefix[k, j] = P[k, j] * (N_KK[k, j] - _typed(1.0, f_SNB))

        for i0 in range(0, B, BLOCK):
            n_i = min(BLOCK, B - i0)
            _forward(f, i0, n_i, M, E, q, c, tied, theta_K, xW, pre, h, h_max_SK[s])
            if aux or want_loss:
                _squared_residuals(r2, f, i0, n_i, bb, bF_1N[0], G_NN, orthonormal, scratch)
            _decoder_errors(We, xW, h, q, PN if nested else P, N_KK, n_i)
            if want_loss:
                block_mse, block_prefix = _reconstruction_loss(
                    We, xW, h, q, r2, N_KK, PN_prefix, nested, n_i, scratch
                )
                mse += block_mse
                prefix_mse += block_prefix
            _mse_l1_rows(
                enc,
                dec,
                We,
                h,
                pre,
                l1_w,
                theta_K,
                two_over_B,
                N_KK,
                tied,
                loss.learned_threshold,
                loss.bandwidth,
                n_i,
                grad_h_near,
            )
            bias[:n_i] = _typed(-2.0 * N_KK[0, 0] / B, f_SNB)
            if aux:
                _aux_rows(
                    dec,
                    bias,
                    xW,
                    q,
                    h,
                    r2,
                    norm,
                    tau_SK[s],
                    aux_scale,
                    n_i,
                    scratch,
                    sum_c1,
                    g_cos_sum,
                )
            _batch_sums(C, h, enc, f, i0, n_i, Cf, hh, totals, sum_h, sum_enc)

        _through_features(X, Cf, totals, F_ND, b)
        for k in range(K):  # the terms in W_k of d(loss)/dW_k: the aux loss's, the weighted L1's
            row_weight[k] = -g_cos_sum[k] / (max(norm[k], EPS) ** 2) if aux else 0.0
            if loss.l1_weighted:
                row_weight[k] += (loss.l1 / B) * sum_h[k] / max(norm[k], EPS)
        _decoder_gradient(grads.W_dec_SKD[s], X, W, hh, N_KK, row_weight, B)
        _bias_gradient(
            grads.b_dec_SD[s],
            X[rows - 1],
            W,
            weights.W_enc_SDK[s],
            tied,
            N_KK,
            sum_h,
            sum_c1,
            sum_enc,
            B,
        )
        if not tied:
            for k in range(K):
                grads.b_enc_SK[s, k] = sum_enc[k]
                for d in range(D):
                    grads.W_enc_SDK[s, d, k] = X[K + k, d]
        if loss.learned_threshold:  # d/d(log theta) of the straight-through estimate
            for k in range(K):
                grads.log_threshold_SK[s, k] = (
                    grad_h_near[k] * (-(theta_K[k] / loss.bandwidth)) * theta_K[k]
                )
        if want_loss:
            l1_sum = 0.0
            for k in range(K):
                l1_sum += sum_h[k] * (norm[k] if loss.l1_weighted else 1.0)
            losses_S3[s, 0] = (mse - prefix_mse) / B  # the full width's ||x_hat - x||^2
            losses_S3[s, 1] = l1_sum / B  # mean_b sum_k w_k h_k
            losses_S3[s, 2] = prefix_mse / B


# -- the pieces, per block of samples ------------------------------------------------------------
# inline="always": numba pastes each piece into stack_gradients before compiling it, so a piece
# costs no call, and no reference counts on the dozen arrays it is handed, per block.


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _forward(f, i0, n_i, M, E, q, c, tied, theta_K, xW, pre, h, h_max_K):
    """The forward pass: x.W_k (xW), pre-activations (tied: W_k (x - b); untied: through E and c),
    h = pre [pre > theta], and each latent's running max of h."""
    zero = _typed(0.0, xW)
    for k in range(M.shape[0]):
        _combine(xW[k], f, i0, n_i, M[k], zero)
        if tied:
            for i in range(n_i):
                pre[k, i] = xW[k, i] - q[k]
        else:
            _combine(pre[k], f, i0, n_i, E[k], c[k])
        theta = theta_K[k]
        peak = h_max_K[k]
        for i in range(n_i):
            h[k, i] = pre[k, i] if pre[k, i] > theta else zero
            peak = max(peak, h[k, i])
        h_max_K[k] = peak


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _squared_residuals(r2, f, i0, n_i, bb, bF, G_NN, orthonormal, Gf):
    """r2 = ||x - b||^2 = ||b||^2 + sum_n f_n ((G f)_n - 2 b.F_n), with G = I when F is orthonormal
    (then two features per pass). Gf: scratch."""
    N = f.shape[0]
    two = _typed(2.0, r2)
    for i in range(n_i):
        r2[i] = bb
    if orthonormal:
        for n in range(0, N - 1, 2):
            f0, f1 = f[n, i0 : i0 + n_i], f[n + 1, i0 : i0 + n_i]
            b0, b1 = two * bF[n], two * bF[n + 1]
            for i in range(n_i):
                r2[i] += f0[i] * (f0[i] - b0) + f1[i] * (f1[i] - b1)
        if N % 2:
            f0, b0 = f[N - 1, i0 : i0 + n_i], two * bF[N - 1]
            for i in range(n_i):
                r2[i] += f0[i] * (f0[i] - b0)
    else:
        for n in range(N):
            fn, b0 = f[n, i0 : i0 + n_i], two * bF[n]
            _combine(Gf, f, i0, n_i, G_NN[n], _typed(0.0, r2))
            for i in range(n_i):
                r2[i] += fn[i] * (Gf[i] - b0)


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _decoder_errors(We, xW, h, q, PR, N_KK, n_i):
    """We_k = W_k . e, e = x_hat - x: (P h)_k + q_k - x.W_k; Matryoshka: summed over the prefixes,
    (P N h)_k + n_k (q_k - x.W_k). PR: P, or P * N."""
    K = We.shape[0]
    for k in range(K):
        nk = N_KK[k, k]
        for i in range(n_i):
            We[k, i] = nk * (q[k] - xW[k, i])
        for j in range(K):
            p = PR[k, j]
            for i in range(n_i):
                We[k, i] += p * h[j, i]


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _reconstruction_loss(We, xW, h, q, r2, N_KK, PN_prefix, nested, n_i, scratch):
    """The block's sums of ||e||^2 over every prefix (the full width included), and over the
    prefixes below the full width alone: ||e||^2 = h.(P h + 2 q - 2 x W) + ||x - b||^2;
    Matryoshka: summed over the prefixes, h.(P N h + 2 n (q - x W)) + #widths ||x - b||^2."""
    K = We.shape[0]
    one, two = _typed(1.0, We), _typed(2.0, We)
    prefix_widths = N_KK[0, 0] - one
    total = prefix = 0.0
    for i in range(n_i):
        total += r2[i]
    if nested:
        for i in range(n_i):
            total += prefix_widths * r2[i]
            prefix += prefix_widths * r2[i]
    for k in range(K):
        nk = N_KK[k, k]
        for i in range(n_i):
            total += h[k, i] * (We[k, i] + nk * (q[k] - xW[k, i]))
        if nested:  # counts N - 1, n - 1
            for i in range(n_i):
                scratch[i] = two * (nk - one) * (q[k] - xW[k, i])
            for j in range(K):
                p = PN_prefix[k, j]
                for i in range(n_i):
                    scratch[i] += p * h[j, i]
            for i in range(n_i):
                prefix += h[k, i] * scratch[i]
    return total, prefix


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _mse_l1_rows(
    enc,
    dec,
    We,
    h,
    pre,
    l1_w,
    theta_K,
    two_over_B,
    N_KK,
    tied,
    learned_threshold,
    bandwidth,
    n_i,
    grad_h_near,
):
    """The reconstruction and L1 terms' per-sample coefficients: dL/dh_k = 2/B We_k + l1_w_k;
    enc_k = dL/dpre_k = dL/dh_k [h_k > 0]; dec_k, the coefficient of (x - b) in dL/dW_k,
    -2/B n_k h_k (plus enc_k when tied: the encoder is W). With a learned JumpReLU threshold,
    adds to grad_h_near dL/dh summed where pre lies within the bandwidth of theta."""
    zero = _typed(0.0, enc)
    for k in range(We.shape[0]):
        two_over_B_n = two_over_B * N_KK[k, k]
        theta = theta_K[k]
        near = zero
        for i in range(n_i):
            grad_h = two_over_B * We[k, i] + l1_w[k]
            enc[k, i] = grad_h if h[k, i] != zero else zero
            if learned_threshold and abs(pre[k, i] - theta) < bandwidth / 2:
                near += grad_h
            dec[k, i] = enc[k, i] - two_over_B_n * h[k, i] if tied else -two_over_B_n * h[k, i]
        grad_h_near[k] += near


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _aux_rows(dec, bias, xW, q, h, r2, norm, tau_K, aux_scale, n_i, inv_r, sum_c1, g_cos_sum):
    """The aux loss L = lam/(B K) sum [h <= tau] cos^2, cos = a / (r n), a = (x - b) . W_k,
    r = ||x - b||: adds c1 = (dL/dcos) / (r n) to dec_k and d = sum_k (dL/dcos) cos / r^2 to bias,
    per sample; and c1's and (dL/dcos) cos's batch sums to sum_c1 and g_cos_sum. inv_r: scratch."""
    zero, one, eps = _typed(0.0, dec), _typed(1.0, dec), _typed(EPS, dec)
    for i in range(n_i):
        inv_r[i] = one / max(math.sqrt(max(r2[i], zero)), eps)
    for k in range(dec.shape[0]):
        inv_n = one / max(norm[k], eps)
        tau = tau_K[k]
        total_c1 = zero
        total_g_cos = zero
        for i in range(n_i):
            a = xW[k, i] - q[k]  # (x - b) . W_k, the tied pre-activation too
            scale = inv_r[i] * inv_n
            cos = a * scale
            g = cos * aux_scale if h[k, i] <= tau else zero
            c1 = g * scale
            dec[k, i] += c1
            total_c1 += c1
            total_g_cos += g * cos
            bias[i] += g * cos * inv_r[i] * inv_r[i]
        sum_c1[k] += total_c1
        g_cos_sum[k] += total_g_cos


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _batch_sums(C, h, enc, f, i0, n_i, Cf, hh, totals, sum_h, sum_enc):
    """This block's share of the sums over the batch: C f^T, h h^T, and the sums of C's rows, h and enc."""
    _add_products(Cf, C, f, i0, n_i)
    _add_products(hh, h, h, 0, n_i)
    zero = _typed(0.0, C)
    for row in range(C.shape[0]):
        acc = zero
        for i in range(n_i):
            acc += C[row, i]
        totals[row] += acc
    for k in range(h.shape[0]):
        acc = zero
        acc_enc = zero
        for i in range(n_i):
            acc += h[k, i]
            acc_enc += enc[k, i]
        sum_h[k] += acc
        sum_enc[k] += acc_enc


# -- after the batch: through F, and the terms in W ------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _through_features(X, Cf, totals, F_ND, b):
    """X[row] = sum_i c_i (x_i - b) = (sum_i c_i f_i) F - (sum_i c_i) b, without forming x.
    (The loops over D are innermost and contiguous: strided ones cost more than the batch.)"""
    for row in range(X.shape[0]):
        for d in range(X.shape[1]):
            X[row, d] = -totals[row] * b[d]
        for n in range(F_ND.shape[0]):
            weight = Cf[row, n]
            for d in range(X.shape[1]):
                X[row, d] += weight * F_ND[n, d]


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _decoder_gradient(g_W_KD, X, W, hh, N_KK, row_weight, B):
    """d(loss)/dW_k = X_k (the rows' sum) + row_weight_k W_k + 2/B sum_j (h h^T)_kj N_kj W_j."""
    K, D = W.shape
    for k in range(K):
        weight = row_weight[k]
        for d in range(D):
            g_W_KD[k, d] = X[k, d] + weight * W[k, d]
        for j in range(K):
            c_j = (2.0 / B) * hh[k, j] * N_KK[k, j]
            for d in range(D):
                g_W_KD[k, d] += c_j * W[j, d]


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH, inline="always")
def _bias_gradient(g_b_D, X_bias, W, W_enc_DK, tied, N_KK, sum_h, sum_c1, sum_enc, B):
    """d(loss)/db = X_bias + sum_k (2/B n_k sum_i h_k - sum_i c1_k) W_k - sum_k (sum_i enc_k) W_enc_k."""
    K, D = W.shape
    for d in range(D):
        g_b_D[d] = X_bias[d]
    for k in range(K):
        c_k = (2.0 / B) * N_KK[k, k] * sum_h[k] - sum_c1[k]
        for d in range(D):
            encoder = W[k, d] if tied else W_enc_DK[d, k]
            g_b_D[d] += c_k * W[k, d] - sum_enc[k] * encoder


def loss_and_grads(
    arch: Architecture,
    params: dict,
    geometry: WorldGeometry,
    f_SNB: np.ndarray,
    weights: dict[str, float],
    tau_SK: np.ndarray | None = None,
    want_loss: bool = False,
    out: dict | None = None,
):
    """As `fastpath.loss_and_grads` on numpy arrays, but returns the batch max of h [S, K]
    instead of h. `out`: arrays to write the gradients into (by parameter name), e.g. views of
    the optimiser's flat gradient buffer; allocated when None."""
    l1, aux_lambda = term_weights(weights)
    W_dec = params["W_dec_SKD"]
    S, K, D = W_dec.shape
    dtype = W_dec.dtype
    grads = out if out is not None else {name: np.empty_like(p) for name, p in params.items()}
    empty3, empty2 = np.empty((S, 0, 0), dtype), np.empty((S, 0), dtype)
    if arch.learned_threshold:
        threshold = np.exp(params["log_threshold_SK"])
    elif arch.jumprelu and tau_SK is not None:
        threshold = tau_SK.astype(dtype, copy=False)
    else:
        threshold = np.zeros((S, K), dtype)
    tau = tau_SK.astype(dtype, copy=False) if tau_SK is not None else threshold
    h_max = np.empty((S, K), dtype)
    losses = np.zeros((S, 3), dtype)
    weights_in = Weights(
        W_dec,
        params["b_dec_SD"],
        params.get("W_enc_SDK", empty3),
        params.get("b_enc_SK", empty2),
        threshold,
    )
    grads_out = Gradients(
        grads["W_dec_SKD"],
        grads["b_dec_SD"],
        grads.get("W_enc_SDK", empty3),
        grads.get("b_enc_SK", empty2),
        grads.get("log_threshold_SK", empty2),
    )
    loss = Loss(
        arch.tied,
        arch.l1_weighted_by_decoder_norm,
        arch.learned_threshold,
        float(arch.bandwidth),
        float(l1),
        float(aux_lambda),
    )
    stack_gradients(
        f_SNB,
        geometry.F_ND,
        geometry.G_NN,
        geometry.orthonormal,
        weights_in,
        loss,
        tau,
        _nesting(arch, K, dtype),
        want_loss,
        grads_out,
        h_max,
        losses,
    )
    if not want_loss:
        return None, h_max, grads
    logged = {"mse": losses[:, 0], "l1": losses[:, 1]}
    if arch.widths is not None:
        logged["prefix_mse"] = losses[:, 2]
    return logged, h_max, grads


_NESTINGS: dict = {}


def _nesting(arch: Architecture, K: int, dtype) -> np.ndarray:
    """The kernel's nesting_3KK: N of `Architecture.nesting` in its dtype and two scratch
    matrices, made once per widths (every step asks; one training thread calls the kernel)."""
    key = (arch.widths, K, dtype)
    nesting = _NESTINGS.get(key)
    if nesting is None:
        nesting = _NESTINGS[key] = np.zeros((3, K, K), dtype)
        nesting[0] = arch.nesting(K)[1]
    return nesting


def warm_up(arch: Architecture, params: dict, geometry: WorldGeometry) -> None:
    """Load (or, the first time on a machine, compile) the kernel for these arrays' types now,
    with one call on a single empty sample into throwaway gradients, so no training step pays it."""
    W_dec = params["W_dec_SKD"]
    empty_sample = np.zeros((W_dec.shape[0], geometry.F_ND.shape[0], 1), W_dec.dtype)
    loss_and_grads(arch, params, geometry, empty_sample, {"mse": 1.0, "l1": 0.0}, None, False)
