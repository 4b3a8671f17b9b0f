"""The CPU fast path: one compiled call computes every gradient of an SAE stack for a batch.

Same math as `fastpath.py` (hand-derived gradients in feature space, checked against autograd
in tests/test_fastpath.py), as loops compiled by numba instead of ~40 array calls: at toy sizes
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


@numba.njit(cache=True, nogil=True)
def _typed(value, like):
    """`value` in the dtype of the array `like`: numba makes Python floats float64, and one
    float64 constant in a float32 loop converts every element and halves the SIMD lanes."""
    out = np.empty(1, like.dtype)
    out[0] = value
    return out[0]


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


@numba.njit(cache=True, nogil=True, fastmath=FAST_MATH)
def stack_gradients(f_SNB, F_ND, G_NN, orthonormal, W_dec_SKD, b_dec_SD, W_enc_SDK, b_enc_SK, threshold_SK,
                    tied, l1_weighted, learned_threshold, bandwidth, l1, aux_lambda, tau_SK, want_loss,
                    nested, n_K, N_KK, n_widths,
                    g_W_dec_SKD, g_b_dec_SD, g_W_enc_SDK, g_b_enc_SK, g_log_threshold_SK, h_max_SK, losses_S3):
    """Write d(loss)/d(param) of every SAE s of the stack into the g_* arrays (the untied ones
    and g_log_threshold only where they apply), the batch max of each latent into h_max_SK and,
    if want_loss, (mse, l1, prefix_mse) into losses_S3.

    loss = mean_b ||x_hat - x||^2 + l1 * mean_b sum_k w_k h_k + aux_lambda * aux, as fastpath.py;
    Matryoshka (`nested`): the squared error summed over the n_widths prefixes instead, with
    n_K[k] the prefixes that hold latent k and N_KK[k, j] = n_K[max(k, j)] (ones, and 1, when plain).
    threshold_SK gates h = pre * [pre > threshold] (zeros for ReLU); tau_SK is the aux loss's.
    The batch is taken in blocks of BLOCK samples; every loop over a block is innermost and
    contiguous, so it runs in SIMD lanes.

    Each gradient is a sum over the batch of per-sample coefficients times (x_i - b), plus terms
    in W: the coefficients of one parameter are added up per sample first (rows `dec`, `enc`
    and `bias` below), so only those few rows go through f (block by block) and F (once)."""
    S, N, B = f_SNB.shape
    K, D = W_dec_SKD.shape[1], W_dec_SKD.shape[2]
    aux = aux_lambda > 0.0
    dtype = f_SNB.dtype
    zero = _typed(0.0, f_SNB)
    one = _typed(1.0, f_SNB)
    two = _typed(2.0, f_SNB)
    eps = _typed(EPS, f_SNB)
    two_over_B = _typed(2.0 / B, f_SNB)
    l1_over_B = _typed(l1 / B, f_SNB)
    aux_scale = _typed(2.0 * aux_lambda / (B * K), f_SNB)

    M = np.empty((K, N), dtype)  # W_dec F^T: x . W_k = sum_n f_n M[k, n]
    E = np.empty((K, N), dtype)  # the untied encoder's W_enc^T F^T
    W_enc_KD = np.empty((K, D), dtype)  # the untied encoder, a row per latent
    q_K1 = np.empty((K, 1), dtype)  # W_k . b
    c_K1 = np.empty((K, 1), dtype)  # the untied encoder's b_enc - W_enc^T b
    P = np.empty((K, K), dtype)  # W_dec W_dec^T
    PN = np.empty((K, K), dtype)  # Matryoshka: P * N, and P * (N - 1) for the prefixes' loss alone
    PN_prefix = np.empty((K, K), dtype)
    two_over_B_n = np.empty(K, dtype)  # 2/B n_k
    bias_row = _typed(-2.0 * n_widths / B, f_SNB)
    prefix_widths = _typed(n_widths - 1.0, f_SNB)
    norm = np.empty(K, dtype)
    bF_1N = np.empty((1, N), dtype)  # b . F_n
    l1_w = np.empty(K, dtype)
    # Scratch for one block of samples.
    xW = np.empty((K, BLOCK), dtype)
    pre = np.empty((K, BLOCK), dtype)
    h = np.empty((K, BLOCK), dtype)
    r = np.empty(BLOCK, dtype)
    r2 = np.empty(BLOCK, dtype)  # ||x - b||^2
    inv_r = np.empty(BLOCK, dtype)
    Gf = np.empty(BLOCK, dtype)
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
    X = np.empty((rows, D))  # X[row] = sum_i C[row, i] (x_i - b)

    for s in range(S):
        f = f_SNB[s]
        W = W_dec_SKD[s]
        b = b_dec_SD[s]
        bb = _small_products(W, b.reshape(1, D), W_enc_SDK[s], b_enc_SK[s], F_ND, tied, M, E, W_enc_KD, q_K1, c_K1,
                             P, norm, bF_1N)
        q, c, bF = q_K1[:, 0], c_K1[:, 0], bF_1N[0]
        for k in range(K):
            l1_w[k] = l1_over_B * (norm[k] if l1_weighted else one)
            h_max_SK[s, k] = zero
        Cf[:] = 0.0
        totals[:] = 0.0
        hh[:] = 0.0
        sum_h[:] = 0.0
        sum_enc[:] = 0.0
        sum_c1[:] = 0.0
        g_cos_sum[:] = 0.0
        grad_h_near[:] = 0.0
        mse = 0.0
        prefix_mse = 0.0
        for k in range(K):
            two_over_B_n[k] = two_over_B * n_K[k]
        if nested:
            for k in range(K):
                for j in range(K):
                    PN[k, j] = P[k, j] * N_KK[k, j]
                    PN_prefix[k, j] = P[k, j] * (N_KK[k, j] - one)
        PR = PN if nested else P  # the matrix of r = W_dec e summed over the prefixes

        for i0 in range(0, B, BLOCK):
            n_i = min(BLOCK, B - i0)
            # Forward: pre-activations and h.
            for k in range(K):
                _combine(xW[k], f, i0, n_i, M[k], zero)
                if tied:
                    for i in range(n_i):
                        pre[k, i] = xW[k, i] - q[k]
                else:
                    _combine(pre[k], f, i0, n_i, E[k], c[k])
                theta = threshold_SK[s, k]
                peak = h_max_SK[s, k]
                for i in range(n_i):
                    h[k, i] = pre[k, i] if pre[k, i] > theta else zero
                    peak = max(peak, h[k, i])
                h_max_SK[s, k] = peak
            if aux or want_loss:
                # r2 = ||x - b||^2 = ||b||^2 + sum_n f_n ((G f)_n - 2 b.F_n), with G = I when F is
                # orthonormal (then two features per pass).
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
                        _combine(Gf, f, i0, n_i, G_NN[n], zero)
                        for i in range(n_i):
                            r2[i] += fn[i] * (Gf[i] - b0)
                if want_loss:
                    for i in range(n_i):
                        mse += r2[i]
                    if nested:  # the nested loss counts ||x - b||^2 once per prefix
                        for i in range(n_i):
                            mse += prefix_widths * r2[i]
                            prefix_mse += prefix_widths * r2[i]

            # Backward through the MSE and L1: r = W_k . e = (P h)_k + q_k - x W_k; Matryoshka:
            # summed over the prefixes, r = (P N h)_k + n_k (q_k - x W_k).
            for k in range(K):
                nk = n_K[k]
                if nested:
                    for i in range(n_i):
                        r[i] = nk * (q[k] - xW[k, i])
                else:
                    for i in range(n_i):
                        r[i] = q[k] - xW[k, i]
                for j in range(K):
                    p = PR[k, j]
                    for i in range(n_i):
                        r[i] += p * h[j, i]
                if want_loss:
                    # ||e||^2 = h.(P h + 2 q - 2 x W) + ||b||^2 - 2 x.b + ||x||^2; Matryoshka: summed
                    # over the prefixes, h.(P N h + 2 n (q - x W)) + #widths ||x - b||^2.
                    for i in range(n_i):
                        mse += h[k, i] * (r[i] + nk * (q[k] - xW[k, i]))
                    if nested:  # the prefixes below the full width alone: counts N - 1, n - 1
                        for i in range(n_i):
                            Gf[i] = two * (nk - one) * (q[k] - xW[k, i])
                        for j in range(K):
                            p = PN_prefix[k, j]
                            for i in range(n_i):
                                Gf[i] += p * h[j, i]
                        for i in range(n_i):
                            prefix_mse += h[k, i] * Gf[i]
                theta = threshold_SK[s, k]
                near = zero
                for i in range(n_i):
                    grad_h = two_over_B * r[i] + l1_w[k]
                    enc[k, i] = grad_h if h[k, i] != zero else zero
                    if learned_threshold and abs(pre[k, i] - theta) < bandwidth / 2:
                        near += grad_h
                    dec[k, i] = enc[k, i] - two_over_B_n[k] * h[k, i] if tied else -two_over_B_n[k] * h[k, i]
                grad_h_near[k] += near
            for i in range(n_i):
                bias[i] = bias_row

            if aux:
                # L = lam/(B K) sum [h <= tau] cos^2, cos = a / (r n), a = (x - b) . W_k, r = ||x - b||:
                # dL/dW_k gets c1 = (dL/dcos) / (r n) per sample, dL/db gets d = sum_k (dL/dcos) cos / r^2.
                for i in range(n_i):
                    inv_r[i] = one / max(math.sqrt(max(r2[i], zero)), eps)
                for k in range(K):
                    inv_n = one / max(norm[k], eps)
                    tau = tau_SK[s, k]
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

            # This block's share of the sums over the batch.
            _add_products(Cf, C, f, i0, n_i)
            _add_products(hh, h, h, 0, n_i)
            for row in range(rows):
                acc = zero
                for i in range(n_i):
                    acc += C[row, i]
                totals[row] += acc
            for k in range(K):
                acc = zero
                acc_enc = zero
                for i in range(n_i):
                    acc += h[k, i]
                    acc_enc += enc[k, i]
                sum_h[k] += acc
                sum_enc[k] += acc_enc

        l1_sum = 0.0
        for k in range(K):
            l1_sum += sum_h[k] * (norm[k] if l1_weighted else 1.0)

        # X[row] = sum_i c_i (x_i - b) = (sum_i c_i f_i) F - (sum_i c_i) b, without forming x.
        # (The loops over D here are innermost and contiguous too: strided ones cost more than the batch.)
        for row in range(rows):
            for d in range(D):
                X[row, d] = -totals[row] * b[d]
            for n in range(N):
                weight = Cf[row, n]
                for d in range(D):
                    X[row, d] += weight * F_ND[n, d]

        for k in range(K):
            weight = -g_cos_sum[k] / (max(norm[k], EPS) ** 2) if aux else 0.0
            if l1_weighted:
                weight += (l1 / B) * sum_h[k] / max(norm[k], EPS)
            for d in range(D):
                g_W_dec_SKD[s, k, d] = X[k, d] + weight * W[k, d]
            for j in range(K):
                c_j = (2.0 / B) * hh[k, j] * N_KK[k, j]
                for d in range(D):
                    g_W_dec_SKD[s, k, d] += c_j * W[j, d]
            if not tied:
                g_b_enc_SK[s, k] = sum_enc[k]
            if learned_threshold:
                theta = threshold_SK[s, k]
                g_log_threshold_SK[s, k] = grad_h_near[k] * (-(theta / bandwidth)) * theta
        if not tied:
            for d in range(D):
                for k in range(K):
                    g_W_enc_SDK[s, d, k] = X[K + k, d]
        for d in range(D):
            g_b_dec_SD[s, d] = X[rows - 1, d]
        for k in range(K):
            c_k = (2.0 / B) * n_K[k] * sum_h[k] - sum_c1[k]
            for d in range(D):
                encoder = W[k, d] if tied else W_enc_SDK[s, d, k]
                g_b_dec_SD[s, d] += c_k * W[k, d] - sum_enc[k] * encoder
        if want_loss:
            losses_S3[s, 0] = (mse - prefix_mse) / B  # the full width's ||x_hat - x||^2
            losses_S3[s, 1] = l1_sum / B  # mean_b sum_k w_k h_k
            losses_S3[s, 2] = prefix_mse / B


def loss_and_grads(arch: Architecture, params: dict, geometry: WorldGeometry, f_SNB: np.ndarray,
                   weights: dict[str, float], tau_SK: np.ndarray | None = None, want_loss: bool = False,
                   out: dict | None = None):
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
    n_K, N_KK = _nesting(arch, K, dtype)
    stack_gradients(
        f_SNB, geometry.F_ND, geometry.G_NN, geometry.orthonormal, W_dec, params["b_dec_SD"],
        params.get("W_enc_SDK", empty3), params.get("b_enc_SK", empty2), threshold,
        arch.tied, arch.l1_weighted_by_decoder_norm, arch.learned_threshold, arch.bandwidth, l1, aux_lambda, tau,
        want_loss, arch.widths is not None, n_K, N_KK, float(len(arch.widths or (K,))),
        grads["W_dec_SKD"], grads["b_dec_SD"], grads.get("W_enc_SDK", empty3), grads.get("b_enc_SK", empty2),
        grads.get("log_threshold_SK", empty2), h_max, losses)
    if not want_loss:
        return None, h_max, grads
    logged = {"mse": losses[:, 0], "l1": losses[:, 1]}
    if arch.widths is not None:
        logged["prefix_mse"] = losses[:, 2]
    return logged, h_max, grads


_NESTINGS: dict = {}


def _nesting(arch: Architecture, K: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """`Architecture.nesting` in the kernel's dtype, made once per widths (every step asks)."""
    key = (arch.widths, K, np.dtype(dtype))
    if key not in _NESTINGS:
        _NESTINGS[key] = tuple(np.ascontiguousarray(a, dtype=dtype) for a in arch.nesting(K))
    return _NESTINGS[key]


def warm_up(arch: Architecture, params: dict, geometry: WorldGeometry) -> None:
    """Load (or, the first time on a machine, compile) the kernel for these arrays' types now,
    with one call on a single empty sample into throwaway gradients, so no training step pays it."""
    W_dec = params["W_dec_SKD"]
    empty_sample = np.zeros((W_dec.shape[0], geometry.F_ND.shape[0], 1), W_dec.dtype)
    loss_and_grads(arch, params, geometry, empty_sample, {"mse": 1.0, "l1": 0.0}, None, False)
