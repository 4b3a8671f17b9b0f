"""The CPU fast path: one compiled call computes every gradient of an SAE stack for a batch.

Same math as `fastpath.py` (hand-derived gradients in feature space, checked against autograd
in tests/test_fastpath.py), as loops compiled by numba instead of ~40 array calls: at toy sizes
(K = 5 latents, N = 20 features) each numpy call costs more in overhead than its arithmetic.
Every loop over the batch is innermost and contiguous, so it runs in SIMD lanes; a first try
that walked sample by sample over the nonzero features was 4x slower despite doing less work.
Each gradient is a sum over the batch of per-sample coefficients times (x_i - b) plus terms in
W: the coefficients of one parameter are added up per sample first, so only K + 1 rows (tied)
or 2K + 1 (untied) go through f and F, once, after the batch.

The kernel runs single-threaded and releases the GIL, so the sampling thread keeps the other core.
"""

from __future__ import annotations

import math

import numba
import numpy as np

EPS = 1e-12  # as torch.nn.functional.normalize


# Reassociation lets LLVM vectorise the sums over the batch; no "nnan"/"ninf": training relies
# on NaN and inf surviving to its finiteness check.
FAST_MATH = {"reassoc", "contract", "nsz"}


@numba.njit(cache=True, nogil=True)
def _typed(value, like):
    """`value` in the dtype of the array `like`: numba makes Python floats float64, and one
    float64 constant in a float32 loop converts every element and halves the SIMD lanes."""
    out = np.empty(1, like.dtype)
    out[0] = value
    return out[0]


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _dot(a, b):
    acc = _typed(0.0, a)
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _total(a):
    acc = _typed(0.0, a)
    for i in range(a.shape[0]):
        acc += a[i]
    return acc


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _combine(out, matrix, coefficients, offset):
    """out[i] = offset + sum_n coefficients[n] * matrix[n, i]: a product through f, over the batch.
    Two rows of `matrix` per pass halve the loads and stores of `out`."""
    out[:] = offset
    N = matrix.shape[0]
    for n in range(0, N - 1, 2):
        c0, c1 = coefficients[n], coefficients[n + 1]
        row0, row1 = matrix[n], matrix[n + 1]
        for i in range(out.shape[0]):
            out[i] += c0 * row0[i] + c1 * row1[i]
    if N % 2:
        c0, row0 = coefficients[N - 1], matrix[N - 1]
        for i in range(out.shape[0]):
            out[i] += c0 * row0[i]


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _products(out_RN, A_RB, f_NB):
    """out[r, n] = sum_i A[r, i] f[n, i]. Two rows of A per pass over f[n]: one dot product at a
    time waits on its single running sum; two keep twice the SIMD units busy (2-4x faster)."""
    R, N = A_RB.shape[0], f_NB.shape[0]
    for n in range(N):
        fn = f_NB[n]
        for r in range(0, R - 1, 2):
            a0, a1 = A_RB[r], A_RB[r + 1]
            acc0 = _typed(0.0, fn)
            acc1 = _typed(0.0, fn)
            for i in range(fn.shape[0]):
                acc0 += a0[i] * fn[i]
                acc1 += a1[i] * fn[i]
            out_RN[r, n] = acc0
            out_RN[r + 1, n] = acc1
        if R % 2:
            out_RN[R - 1, n] = _dot(A_RB[R - 1], fn)


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def stack_gradients(f_SNB, F_ND, G_NN, orthonormal, W_dec_SKD, b_dec_SD, W_enc_SDK, b_enc_SK, threshold_SK,
                    tied, l1_weighted, learned_threshold, bandwidth, l1, aux_lambda, tau_SK, want_loss,
                    g_W_dec_SKD, g_b_dec_SD, g_W_enc_SDK, g_b_enc_SK, g_log_threshold_SK, h_max_SK, losses_S2):
    """Write d(loss)/d(param) of every SAE s of the stack into the g_* arrays (the untied ones
    and g_log_threshold only where they apply), the batch max of each latent into h_max_SK and,
    if want_loss, (mse, l1) into losses_S2.

    loss = mean_b ||x_hat - x||^2 + l1 * mean_b sum_k w_k h_k + aux_lambda * aux, as fastpath.py.
    threshold_SK gates h = pre * [pre > threshold] (zeros for ReLU); tau_SK is the aux loss's.
    Every loop over the batch is innermost and contiguous, so it runs in SIMD lanes.

    Each gradient is a sum over the batch of per-sample coefficients times (x_i - b), plus terms
    in W: the coefficients of one parameter are added up per sample first (rows `dec`, `enc`
    and `bias` below), so only those few rows go through f and F."""
    S, N, B = f_SNB.shape
    K, D = W_dec_SKD.shape[1], W_dec_SKD.shape[2]
    aux = aux_lambda > 0.0
    dtype = f_SNB.dtype
    zero = _typed(0.0, f_SNB)
    one = _typed(1.0, f_SNB)
    eps = _typed(EPS, f_SNB)
    two_over_B = _typed(2.0 / B, f_SNB)

    M = np.empty((K, N), dtype)  # W_dec F^T: x . W_k = sum_n f_n M[k, n]
    E = np.empty((K, N), dtype)  # the untied encoder's W_enc^T F^T
    q = np.empty(K, dtype)  # W_k . b
    c = np.empty(K, dtype)  # the untied encoder's b_enc - W_enc^T b
    P = np.empty((K, K), dtype)  # W_dec W_dec^T
    norm = np.empty(K, dtype)
    bF = np.empty(N, dtype)  # b . F_n
    xW = np.empty((K, B), dtype)
    pre = np.empty((K, B), dtype)
    h = np.empty((K, B), dtype)
    r = np.empty(B, dtype)
    x_sq = np.zeros(B, dtype)
    x_dot_b = np.zeros(B, dtype)
    inv_r = np.empty(B, dtype)
    Gf = np.empty(B, dtype)
    # The rows that go through f and F: dec (K), the untied encoder's enc (K), bias (1).
    rows = K + 1 if tied else 2 * K + 1
    C = np.empty((rows, B), dtype)
    dec = C[:K]  # d(loss)/dW_k = sum_i dec_ki (x_i - b) + terms in W
    enc = np.empty((K, B), dtype) if tied else C[K : 2 * K]  # d(loss)/d(pre_k)
    bias = C[rows - 1]  # d(loss)/db = sum_i bias_i (x_i - b) + terms in W
    Cf = np.empty((rows, N), dtype)
    X = np.empty((rows, D), dtype)  # X[row] = sum_i C[row, i] (x_i - b)
    sum_h = np.empty(K)
    sum_enc = np.empty(K)
    sum_c1 = np.zeros(K)
    g_cos_sum = np.zeros(K)
    hh = np.empty((K, K), dtype)

    for s in range(S):
        f = f_SNB[s]
        W = W_dec_SKD[s]
        b = b_dec_SD[s]
        # Small products over D, with plain 2D indexing: a slice per dot product costs two atomic
        # reference counts, which made these few hundred dots cost more than the whole batch.
        for k in range(K):
            for n in range(N):
                acc = zero
                for dd in range(D):
                    acc += W[k, dd] * F_ND[n, dd]
                M[k, n] = acc
            acc = zero
            for dd in range(D):
                acc += W[k, dd] * b[dd]
            q[k] = acc
            for j in range(K):
                acc = zero
                for dd in range(D):
                    acc += W[k, dd] * W[j, dd]
                P[k, j] = acc
            norm[k] = math.sqrt(P[k, k])
            if not tied:
                for n in range(N):
                    acc = zero
                    for dd in range(D):
                        acc += W_enc_SDK[s, dd, k] * F_ND[n, dd]
                    E[k, n] = acc
                acc = zero
                for dd in range(D):
                    acc += W_enc_SDK[s, dd, k] * b[dd]
                c[k] = b_enc_SK[s, k] - acc
        bb = zero
        for n in range(N):
            acc = zero
            for dd in range(D):
                acc += b[dd] * F_ND[n, dd]
            bF[n] = acc
        for dd in range(D):
            bb += b[dd] * b[dd]

        # Forward: pre-activations and h.
        for k in range(K):
            _combine(xW[k], f, M[k], zero)
            if tied:
                for i in range(B):
                    pre[k, i] = xW[k, i] - q[k]
            else:
                _combine(pre[k], f, E[k], c[k])
            theta = threshold_SK[s, k]
            peak = zero
            for i in range(B):
                h[k, i] = pre[k, i] if pre[k, i] > theta else zero
                peak = max(peak, h[k, i])
            h_max_SK[s, k] = peak
            sum_h[k] = _total(h[k])
        if aux or want_loss:
            _combine(x_dot_b, f, bF, zero)
            x_sq[:] = 0.0
            for n in range(N):
                if orthonormal:
                    for i in range(B):
                        x_sq[i] += f[n, i] * f[n, i]
                else:
                    _combine(Gf, f, G_NN[n], zero)
                    for i in range(B):
                        x_sq[i] += Gf[i] * f[n, i]

        # Backward through the MSE and L1: r = W_k . e = (P h)_k + q_k - x W_k.
        mse = bb * B + _total(x_sq) - 2.0 * _total(x_dot_b) if want_loss else 0.0
        l1_sum = 0.0
        for k in range(K):
            w_k = norm[k] if l1_weighted else one
            l1_term = _typed(l1 / B, f_SNB) * w_k
            for i in range(B):
                r[i] = q[k] - xW[k, i]
            for j in range(K):
                p = P[k, j]
                for i in range(B):
                    r[i] += p * h[j, i]
            if want_loss:
                # ||e||^2 = h.(P h + 2 q - 2 x W) + ||b||^2 - 2 x.b + ||x||^2
                for i in range(B):
                    mse += h[k, i] * (r[i] + q[k] - xW[k, i])
                l1_sum += w_k * sum_h[k]
            grad_h_near = zero  # d(loss)/dh summed where pre is within the JumpReLU's bandwidth
            theta = threshold_SK[s, k]
            for i in range(B):
                grad_h = two_over_B * r[i] + l1_term
                enc[k, i] = grad_h if h[k, i] != zero else zero
                if learned_threshold and abs(pre[k, i] - theta) < bandwidth / 2:
                    grad_h_near += grad_h
                dec[k, i] = enc[k, i] - two_over_B * h[k, i] if tied else -two_over_B * h[k, i]
            sum_enc[k] = _total(enc[k])
            if learned_threshold:
                g_log_threshold_SK[s, k] = grad_h_near * (-(theta / bandwidth)) * theta
        bias[:] = -two_over_B

        if aux:
            # L = lam/(B K) sum [h <= tau] cos^2, cos = a / (r n), a = (x - b) . W_k, r = ||x - b||:
            # dL/dW_k gets c1 = (dL/dcos) / (r n) per sample, dL/db gets d = sum_k (dL/dcos) cos / r^2.
            aux_scale = _typed(2.0 * aux_lambda / (B * K), f_SNB)
            two = _typed(2.0, f_SNB)
            for i in range(B):
                inv_r[i] = one / max(math.sqrt(max(x_sq[i] - two * x_dot_b[i] + bb, zero)), eps)
            for k in range(K):
                inv_n = one / max(norm[k], eps)
                tau = tau_SK[s, k]
                total_c1 = zero
                total_g_cos = zero
                for i in range(B):
                    a = pre[k, i] if tied else xW[k, i] - q[k]
                    scale = inv_r[i] * inv_n
                    cos = a * scale
                    g = cos * aux_scale if h[k, i] <= tau else zero
                    c1 = g * scale
                    dec[k, i] += c1
                    total_c1 += c1
                    total_g_cos += g * cos
                    bias[i] += g * cos * inv_r[i] * inv_r[i]
                sum_c1[k] = total_c1
                g_cos_sum[k] = total_g_cos

        # X[row] = sum_i c_i (x_i - b) = (sum_i c_i f_i) F - (sum_i c_i) b, without forming x.
        # (The loops over D here are innermost and contiguous too: strided ones cost more than the batch.)
        _products(Cf, C, f)
        for row in range(rows):
            total = _total(C[row])
            for dd in range(D):
                X[row, dd] = -total * b[dd]
            for n in range(N):
                weight = Cf[row, n]
                for dd in range(D):
                    X[row, dd] += weight * F_ND[n, dd]
        _products(hh, h, h)

        two_over_B64 = 2.0 / B
        for k in range(K):
            weight = -g_cos_sum[k] / (max(norm[k], EPS) ** 2) if aux else 0.0
            if l1_weighted:
                weight += (l1 / B) * sum_h[k] / max(norm[k], EPS)
            for dd in range(D):
                g_W_dec_SKD[s, k, dd] = X[k, dd] + weight * W[k, dd]
            for j in range(K):
                c_j = two_over_B64 * hh[k, j]
                for dd in range(D):
                    g_W_dec_SKD[s, k, dd] += c_j * W[j, dd]
            if not tied:
                g_b_enc_SK[s, k] = sum_enc[k]
        if not tied:
            for dd in range(D):
                for k in range(K):
                    g_W_enc_SDK[s, dd, k] = X[K + k, dd]
        for dd in range(D):
            g_b_dec_SD[s, dd] = X[rows - 1, dd]
        for k in range(K):
            c_k = two_over_B64 * sum_h[k] - sum_c1[k]
            for dd in range(D):
                g_b_dec_SD[s, dd] += c_k * W[k, dd]
            if tied:
                for dd in range(D):
                    g_b_dec_SD[s, dd] -= sum_enc[k] * W[k, dd]
            else:
                for dd in range(D):
                    g_b_dec_SD[s, dd] -= sum_enc[k] * W_enc_SDK[s, dd, k]
        if want_loss:
            losses_S2[s, 0] = mse / B
            losses_S2[s, 1] = l1_sum / B


def loss_and_grads(arch, params: dict, geometry, f_SNB: np.ndarray, l1: float, aux_lambda: float = 0.0,
                   tau_SK: np.ndarray | None = None, want_loss: bool = False, out: dict | None = None):
    """As `fastpath.loss_and_grads` on numpy arrays, but returns the batch max of h [S, K]
    instead of h. `out`: arrays to write the gradients into (by parameter name), e.g. views of
    the optimiser's flat gradient buffer; allocated when None."""
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
    losses = np.zeros((S, 2), dtype)
    stack_gradients(
        f_SNB, geometry.F_ND, geometry.G_NN, geometry.orthonormal, W_dec, params["b_dec_SD"],
        params.get("W_enc_SDK", empty3), params.get("b_enc_SK", empty2), threshold,
        arch.tied, arch.l1_weighted_by_decoder_norm, arch.learned_threshold, arch.bandwidth, l1, aux_lambda, tau,
        want_loss, grads["W_dec_SKD"], grads["b_dec_SD"], grads.get("W_enc_SDK", empty3), grads.get("b_enc_SK", empty2),
        grads.get("log_threshold_SK", empty2), h_max, losses)
    return ({"mse": losses[:, 0], "l1": losses[:, 1]} if want_loss else None), h_max, grads
