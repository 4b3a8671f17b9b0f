"""Hand-derived gradients on inputs x for SAEs with few active latents per sample: the engine of
sparse (large) worlds, `SparseLatentsEngine` in training/engines.py.

Of a step, only the encoder's pre-activations pre = (x - b_dec) W_enc + b_enc ([B, D] x [D, K]) are
inherently dense. The activation keeps a short list of entries (sample b, latent j, h_bj): TopK k
per sample, BatchTopK k x B per batch, ReLU its positive ones; everything after works on that list,
one decoder row per entry: the reconstruction b_dec + sum_j h_bj W_j, the error's gradient to each
kept h (e_b . W_j), the decoder's gradient (h_bj e_b into row j) and the encoder's (grad_pre_bj
(x_b - b_dec) into column j). That is O(entries x D) where autograd pays O(B x K x D) three more times.

Matryoshka (nested widths w_1 < ... < w_m = K): latent j sits in bracket t_j (w_{t-1} <= j < w_t);
the prefix reconstructions are running sums over brackets, and latent j sees the summed error of
every prefix that holds it, sum_{s >= t_j} e_s. The aux loss (activation orthogonality) needs
cos(x - b, W_j) for every latent, so it is dense: two more [B, D] x [D, K] products, in torch.
L1 (weighted by the decoder norms or not) adds a constant to each kept h's gradient.

Covered (`covers`): tied and untied SAEs with ReLU, TopK or BatchTopK, Matryoshka widths, L1 and the
aux loss. Not covered, trained by autograd beside the others: JumpReLU (its threshold's
pseudo-gradient), and any architecture or loss term without hand-derived gradients.

Two implementations of the list part: torch index ops (`torch_*`, any device: the GPU's path, and on
the CPU the reference the tests compare the kernels with) and numba kernels (`_keep_*`,
`_sparse_grads`: the CPU's, one thread). tests/engine/test_sparse_latents.py checks both against autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch

from .chunks import ChunkPool
from .fastpath import GRADIENT_FORMULAS, HAND_DERIVED_TERMS
from ..saes import ARCHITECTURES, StackedSAE

EPS = 1e-12  # as torch.nn.functional.normalize
COVERED_ACTIVATIONS = ("relu", "topk", "batchtopk")
DENSE_FROM = 1 / 8
"""With more than this share of latents active (a ReLU SAE early in training, a large k), the step
works on the dense h by products (`torch_dense_grads`): one decoder row per entry, memory-bound,
costs more than a product's share of K rows beyond about this share (measured on this CPU)."""
THRESHOLD_GUESS = 0.95
"""BatchTopK's selection collects the values above this share of the last batch's threshold (the
fewer collected, the faster they are partitioned): in a width-1024 SAE's training at SynthSAEBench
laws the threshold never fell below 0.96 x the last batch's (measured over 300 batches); where it
does fall further, the selection retries from `GUESS_RETRY` x as far, then takes every positive value."""
GUESS_RETRY = 0.8


def covers(sae_config) -> bool:
    """Whether the gradients here train the SAE `sae_config` describes (else autograd does)."""
    sae_class = ARCHITECTURES[sae_config.architecture]
    return (
        sae_class.hand_gradients in GRADIENT_FORMULAS
        and sae_config.activation in COVERED_ACTIVATIONS
        and set(sae_class.loss_weights(sae_config, 1.0)) <= HAND_DERIVED_TERMS
    )


@dataclass(frozen=True)
class SparseArchitecture:
    """What the gradients here need to know of an SAE stack."""

    tied: bool
    activation: str
    """relu, topk or batchtopk."""
    k: int | None
    l1_weighted_by_decoder_norm: bool
    widths: tuple[int, ...]
    """The Matryoshka prefixes, or (latents,) for a plain SAE."""

    @classmethod
    def of(cls, sae: StackedSAE) -> "SparseArchitecture":
        if not covers(sae.config):
            raise ValueError(
                f"SAE {sae.config.label!r}: not covered by the sparse-latent gradients"
            )
        return cls(
            sae.hand_gradients == "tied",
            sae.config.activation,
            sae.config.k,
            sae.l1_weighted_by_decoder_norm,
            tuple(sae.config.nested_widths() or (sae.latents,)),
        )


def brackets(widths: tuple[int, ...]) -> np.ndarray:
    """Each latent's Matryoshka bracket t_j: the number of widths <= j (0 for a plain SAE) [K]."""
    return np.searchsorted(np.array(widths), np.arange(widths[-1]), side="right").astype(np.int64)


@dataclass
class Entries:
    """The kept activations of a stack, CSR over the S x B samples (row s * B + b) in row order:
    row r's entries are latent[offsets[r]:offsets[r + 1]] (in 0..K-1) with values h > 0."""

    offsets: torch.Tensor
    latent: torch.Tensor
    value: torch.Tensor
    kept_min_S: torch.Tensor | None = None
    """BatchTopK: each SAE's smallest kept activation (its threshold's new estimate)."""
    h_SBK: torch.Tensor | None = None
    """Set (and the list left empty) when so many latents are active that the step uses products
    on the dense h instead (`DENSE_FROM`)."""

    @classmethod
    def dense(cls, h_SBK: torch.Tensor, kept_min_S: torch.Tensor | None) -> "Entries":
        empty = torch.zeros(0, dtype=torch.long, device=h_SBK.device)
        return cls(empty, empty, h_SBK.new_zeros(0), kept_min_S, h_SBK)

    def above(self, tau_SK: torch.Tensor) -> torch.Tensor:
        """[h > tau] as a dense bool [S, B, K]."""
        if self.h_SBK is not None:
            return self.h_SBK > tau_SK[:, None]
        S, K = tau_SK.shape
        B = (len(self.offsets) - 1) // S
        mask = torch.zeros(S * B * K, dtype=torch.bool, device=tau_SK.device)
        rows = self.rows()
        slot = rows * K + self.latent
        mask[slot] = self.value > tau_SK.reshape(-1)[(rows // B) * K + self.latent]
        return mask.view(S, B, K)

    def rows(self) -> torch.Tensor:
        counts = self.offsets[1:] - self.offsets[:-1]
        return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def loss_and_grads(
    arch: SparseArchitecture,
    params: dict,
    x_SBD: torch.Tensor,
    weights: dict[str, float],
    tau_SK: torch.Tensor | None,
    want_loss: bool,
    out: dict,
    compiled: bool,
    threshold_guess_S: torch.Tensor | None = None,
    pool: ChunkPool | None = None,
    after_encode: Callable[[], None] | None = None,
):
    """Write d(loss)/d(param) into `out` (tensors by parameter name, overwritten) for the loss the SAE
    declares (`weights`: `StackedSAE.loss_weights`), averaged over the batch. Returns (its terms'
    batch means [S] by name if `want_loss`, else None; the batch max of h [S, K]; the entries).
    `compiled`: the numba kernels (CPU tensors), else torch index ops (any device).
    `threshold_guess_S` (BatchTopK, compiled): the last batch's smallest kept activation: the
    selection starts below it (exact whatever it is, fast when close). `pool`: the encoder's
    product in chunks on two threads (`encode`); `after_encode()` runs once that product is done."""
    if (
        set(weights) - HAND_DERIVED_TERMS
        or weights["mse"] != 1.0
        or weights.get("prefix_mse", 1.0) != 1.0
    ):
        raise ValueError(f"no sparse-latent gradients for the loss terms {weights}")
    l1, aux_lambda = weights["l1"], weights.get("aux", 0.0)
    with torch.no_grad():
        W_dec, b_dec = params["W_dec_SKD"], params["b_dec_SD"]
        S, K, D = W_dec.shape
        B = x_SBD.shape[1]
        xc_SBD = x_SBD - b_dec[:, None]
        W_enc = W_dec.transpose(1, 2) if arch.tied else params["W_enc_SDK"]
        pre_SBK = encode(xc_SBD, W_enc, None if arch.tied else params["b_enc_SK"], pool)
        if after_encode is not None:
            after_encode()
        active = arch.k / K if arch.k is not None else float((pre_SBK > 0).float().mean())
        if active > DENSE_FROM:  # many active latents: products beat one row per entry
            h_SBK, kept_min_S = torch_activate(pre_SBK, arch.activation, arch.k)
            entries = Entries.dense(h_SBK, kept_min_S)
        else:
            entries = (compiled_keep if compiled else torch_keep)(
                pre_SBK,
                arch.activation,
                arch.k,
                None if threshold_guess_S is None else THRESHOLD_GUESS * threshold_guess_S,
            )

        # the L1 weights: the decoder norms where the L1 term is trained or logged
        weighted = arch.l1_weighted_by_decoder_norm and (l1 != 0 or want_loss)
        norms_SK = W_dec.norm(dim=-1) if weighted or aux_lambda > 0 else None
        l1_w_SK = norms_SK if weighted else torch.ones_like(W_dec[..., 0])
        # the W_enc gradient as the kernel sums it (row j of W_enc^T by latent): in place where its
        # buffer is stored transposed (`CompiledSparseLatentsEngine`), else copied there after
        in_place = not arch.tied and out["W_enc_SDK"].transpose(1, 2).is_contiguous()
        g_W_encT_SKD = out["W_enc_SDK"].transpose(1, 2) if in_place else torch.empty_like(W_dec)
        g_b_enc_SK = out["b_enc_SK"] if not arch.tied else torch.empty_like(W_dec[..., 0])
        list_grads = compiled_sparse_grads if compiled else torch_sparse_grads
        sums = (torch_dense_grads if entries.h_SBK is not None else list_grads)(
            x_SBD,
            b_dec,
            W_dec,
            entries,
            arch.widths,
            l1_w_SK,
            l1 / B,
            out["W_dec_SKD"],
            g_W_encT_SKD,
            g_b_enc_SK,
            out["b_dec_SD"],
        )
        sum_h_SK, h_max_SK, mse_S, prefix_S, l1_S = sums
        # the encoder's path to b_dec (x - b_dec enters the encoder): - W_enc grad_b_enc
        out["b_dec_SD"] -= torch.bmm(W_enc, g_b_enc_SK[..., None])[..., 0]
        if arch.l1_weighted_by_decoder_norm and l1 != 0:
            out["W_dec_SKD"] += (l1 / B) * (sum_h_SK / norms_SK.clamp_min(EPS))[..., None] * W_dec
        if arch.tied:
            out["W_dec_SKD"] += g_W_encT_SKD
        elif not in_place:
            out["W_enc_SDK"].copy_(g_W_encT_SKD.transpose(1, 2))
        aux_S = None
        if aux_lambda > 0:
            a_SBK = pre_SBK if arch.tied else torch.bmm(xc_SBD, W_dec.transpose(1, 2))
            aux_S = _aux_grads(a_SBK, xc_SBD, W_dec, norms_SK, entries, tau_SK, aux_lambda, out)
        if not want_loss:
            return None, h_max_SK, entries
        losses = {"mse": mse_S / B, "l1": l1_S / B}
        if len(arch.widths) > 1:
            losses["prefix_mse"] = prefix_S / B
        if aux_S is not None:
            losses["aux"] = aux_S
        return losses, h_max_SK, entries


ENCODER_ROWS = 128
"""`encode` with a pool: rows of the batch per chunk (a chunk of 128 x 256 x 1024 runs at the full
sgemm rate of one core, measured; 8 chunks a batch of 1024 let two threads share it evenly)."""


def encode(xc_SBD, W_enc_SDK, b_enc_SK, pool: ChunkPool | None) -> torch.Tensor:
    """The pre-activations (x - b_dec) W_enc (+ b_enc) [S, B, K]: one product, or with a `pool`
    chunks of `ENCODER_ROWS` rows that two threads take in turn."""
    if pool is None:
        if b_enc_SK is None:
            return torch.bmm(xc_SBD, W_enc_SDK)
        return torch.baddbmm(b_enc_SK[:, None], xc_SBD, W_enc_SDK)
    S, B, _ = xc_SBD.shape
    pre_SBK = xc_SBD.new_empty(S, B, W_enc_SDK.shape[-1])
    per_sae = -(-B // ENCODER_ROWS)

    def chunk(i: int) -> None:
        s, start = i // per_sae, (i % per_sae) * ENCODER_ROWS
        rows = slice(start, min(start + ENCODER_ROWS, B))
        if b_enc_SK is None:
            torch.mm(xc_SBD[s, rows], W_enc_SDK[s], out=pre_SBK[s, rows])
        else:
            torch.addmm(b_enc_SK[s], xc_SBD[s, rows], W_enc_SDK[s], out=pre_SBK[s, rows])

    pool.run(chunk, S * per_sae)
    return pre_SBK


def _aux_grads(
    a_SBK, xc_SBD, W_dec, norms_SK, entries: Entries, tau_SK, lam: float, out
) -> torch.Tensor:
    """L = lam / (B K) sum_b sum_j [h_bj <= tau_j] cos_bj^2, cos_bj = a_bj / (r_b n_j), a = (x - b) . W_j,
    r = ||x - b||, n = ||W_j|| (h held fixed, as `saes.losses.aux_loss`): its gradients added to
    `out`'s W_dec and b_dec; returns the term's batch mean [S] (lambda not applied)."""
    S, B, K = a_SBK.shape
    inv_r_SB = 1.0 / xc_SBD.norm(dim=-1).clamp_min(EPS)
    n_SK = norms_SK.clamp_min(EPS)
    scale_SBK = inv_r_SB[..., None] / n_SK[:, None]
    cos = a_SBK * scale_SBK
    low = (~entries.above(tau_SK)).to(cos.dtype)
    value_S = (low * cos * cos).mean(-1).mean(-1)
    g = cos * low * (2.0 * lam / (B * K))  # dL/dcos
    g_cos = g * cos
    c1 = g * scale_SBK
    d_SB = g_cos.sum(-1) * inv_r_SB * inv_r_SB
    # dL/dW_j = sum_b c1_bj (x_b - b) - (sum_b g_bj cos_bj) W_j / n_j^2
    out["W_dec_SKD"] += (
        torch.bmm(c1.transpose(1, 2), xc_SBD) - (g_cos.sum(1) / (n_SK * n_SK))[..., None] * W_dec
    )
    # dL/db = -sum_j (sum_b c1_bj) W_j + sum_b d_b (x_b - b)
    out["b_dec_SD"] += (
        torch.bmm(d_SB[:, None], xc_SBD)[:, 0] - torch.bmm(c1.sum(1)[:, None], W_dec)[:, 0]
    )
    return value_S


# -- torch: any device ------------------------------------------------------------------------


def torch_activate(pre_SBK: torch.Tensor, activation: str, k: int | None):
    """(h [S, B, K] as `StackedSAE.activate` gives it in training, BatchTopK's smallest kept
    activation per SAE or None)."""
    S, B, K = pre_SBK.shape
    h = torch.relu(pre_SBK)
    kept_min = None
    if activation == "topk":
        top = h.topk(k, dim=-1)
        h = torch.zeros_like(h).scatter(-1, top.indices, top.values)
    elif activation == "batchtopk":
        top = h.flatten(1).topk(k * B, dim=-1)
        positive = top.values > 0
        kept_min = torch.where(positive, top.values, torch.inf).amin(-1)
        kept_min = torch.where(kept_min.isinf(), torch.zeros_like(kept_min), kept_min)
        h = torch.zeros_like(h.flatten(1)).scatter(-1, top.indices, top.values).view(S, B, K)
    return h, kept_min


def torch_keep(pre_SBK: torch.Tensor, activation: str, k: int | None, guess_S=None) -> Entries:
    """The kept activations (h > 0) as `StackedSAE.activate` keeps them in training."""
    S, B, K = pre_SBK.shape
    h, kept_min = torch_activate(pre_SBK, activation, k)
    mask = h > 0
    counts = mask.sum(-1).reshape(-1)
    offsets = torch.zeros(S * B + 1, dtype=torch.long, device=h.device)
    offsets[1:] = counts.cumsum(0)
    where = mask.reshape(S * B, K).nonzero()  # row-major: sorted by row, then latent
    return Entries(offsets, where[:, 1], h.reshape(S * B, K)[where[:, 0], where[:, 1]], kept_min)


def torch_dense_grads(
    x_SBD,
    b_dec_SD,
    W_dec_SKD,
    entries: Entries,
    widths,
    l1_w_SK,
    l1_over_B,
    g_W_dec,
    g_W_encT,
    g_b_enc,
    g_b_dec,
):
    """`torch_sparse_grads` by products on the dense h (`entries.h_SBK`), prefix by prefix."""
    h = entries.h_SBK
    B = x_SBD.shape[1]
    bounds = list(zip((0, *widths[:-1]), widths))
    xc_SBD = x_SBD - b_dec_SD[:, None]
    errors, run = [], -xc_SBD
    for lo, hi in bounds:  # the error of each prefix reconstruction
        run = run + torch.bmm(h[:, :, lo:hi], W_dec_SKD[:, lo:hi])
        errors.append(run)
    sq = torch.stack([(e * e).sum(-1).sum(-1) for e in errors], -1)  # [S, m]
    E, acc = [None] * len(bounds), 0.0
    for t in range(len(bounds) - 1, -1, -1):  # latents of bracket t see the errors of prefixes >= t
        acc = acc + errors[t]
        E[t] = (2.0 / B) * acc
    grad_h = (
        torch.cat(
            [
                torch.bmm(E[t], W_dec_SKD[:, lo:hi].transpose(1, 2))
                for t, (lo, hi) in enumerate(bounds)
            ],
            -1,
        )
        + l1_over_B * l1_w_SK[:, None]
    )
    grad_pre = grad_h * (h > 0)
    for t, (lo, hi) in enumerate(bounds):
        g_W_dec[:, lo:hi] = torch.bmm(h[:, :, lo:hi].transpose(1, 2), E[t])
    g_W_encT.copy_(torch.bmm(grad_pre.transpose(1, 2), xc_SBD))
    g_b_enc.copy_(grad_pre.sum(1))
    g_b_dec.copy_(E[0].sum(1))
    l1_S = (h * l1_w_SK[:, None]).sum(-1).sum(-1)
    return h.sum(1), h.amax(1), sq[:, -1], sq[:, :-1].sum(-1), l1_S


def torch_sparse_grads(
    x_SBD,
    b_dec_SD,
    W_dec_SKD,
    entries: Entries,
    widths,
    l1_w_SK,
    l1_over_B,
    g_W_dec,
    g_W_encT,
    g_b_enc,
    g_b_dec,
):
    """The list part of a step by torch index ops: gradients written into the g_* tensors; returns
    (sum of h [S, K], max of h [S, K], mse sum [S], prefix_mse sum [S], l1 sum [S])."""
    S, B, D = x_SBD.shape
    K = W_dec_SKD.shape[1]
    rows = entries.rows()
    sae = rows // B
    slot = sae * K + entries.latent  # the entry's decoder row in [S * K]
    v = entries.value
    m = len(widths)
    bracket = torch.as_tensor(brackets(widths), device=v.device)[entries.latent]
    W_nD = W_dec_SKD.reshape(S * K, D)[slot]
    parts = torch.zeros(S * B * m, D, dtype=v.dtype, device=v.device)
    parts.index_add_(0, rows * m + bracket, v[:, None] * W_nD)
    # prefix reconstructions minus x: the error e_t of each prefix t
    e_SBmD = parts.view(S, B, m, D).cumsum(2) + (b_dec_SD[:, None] - x_SBD)[:, :, None]
    sq = (e_SBmD * e_SBmD).sum(-1).sum(1)  # [S, m]
    # latent j sees the summed error of every prefix that holds it: sum over brackets s >= t_j
    E = (2.0 / B) * e_SBmD.flip(2).cumsum(2).flip(2)
    E_nD = E.reshape(S * B * m, D)[rows * m + bracket]
    l1_w = l1_w_SK.reshape(-1)[slot]
    grad_h = (E_nD * W_nD).sum(-1) + l1_over_B * l1_w
    xc_nD = (x_SBD - b_dec_SD[:, None]).reshape(S * B, D)[rows]
    g_W_dec.zero_().view(S * K, D).index_add_(0, slot, v[:, None] * E_nD)
    g_W_encT.zero_().view(S * K, D).index_add_(0, slot, grad_h[:, None] * xc_nD)
    g_b_enc.zero_().view(-1).index_add_(0, slot, grad_h)
    g_b_dec.copy_(E[:, :, 0].sum(1))
    sum_h = torch.zeros(S * K, dtype=v.dtype, device=v.device).index_add_(0, slot, v)
    h_max = torch.zeros(S * K, dtype=v.dtype, device=v.device).scatter_reduce_(0, slot, v, "amax")
    l1_S = torch.zeros(S, dtype=v.dtype, device=v.device).index_add_(0, sae, v * l1_w)
    return sum_h.view(S, K), h_max.view(S, K), sq[:, -1], sq[:, :-1].sum(-1), l1_S


# -- numba: the CPU ---------------------------------------------------------------------------


def compiled_keep(pre_SBK: torch.Tensor, activation: str, k: int | None, guess_S=None) -> Entries:
    """`torch_keep` by the numba selectors (CPU tensors): the same entries, ties aside. `guess_S`
    (BatchTopK): a lower bound of each SAE's threshold to start from (NaN or absent: none)."""
    S, B, K = pre_SBK.shape
    pre = pre_SBK.contiguous().numpy()
    parts, kept_min = [], np.zeros(S, np.float32)
    for s in range(S):
        if activation == "batchtopk":
            guess = 0.0 if guess_S is None or not guess_S[s] > 0 else float(guess_S[s])
            kept_min[s], *found = _keep_batch_top(pre[s], k * B, np.float32(guess))
        elif activation == "topk":
            found = _keep_row_top(pre[s], k)
        else:
            found = _keep_positive(pre[s])
        parts.append(found)
    offsets = np.zeros(S * B + 1, np.int64)
    for s, (off, _, _) in enumerate(parts):
        offsets[s * B + 1 : (s + 1) * B + 1] = off[1:] + offsets[s * B]
    return Entries(
        torch.from_numpy(offsets),
        torch.from_numpy(np.concatenate([p[1] for p in parts])),
        torch.from_numpy(np.concatenate([p[2] for p in parts])),
        torch.from_numpy(kept_min) if activation == "batchtopk" else None,
    )


def compiled_sparse_grads(
    x_SBD,
    b_dec_SD,
    W_dec_SKD,
    entries: Entries,
    widths,
    l1_w_SK,
    l1_over_B,
    g_W_dec,
    g_W_encT,
    g_b_enc,
    g_b_dec,
):
    """`torch_sparse_grads` by one numba call (CPU tensors)."""
    S, K = W_dec_SKD.shape[:2]
    sum_h, h_max = np.zeros((S, K), np.float32), np.zeros((S, K), np.float32)
    sums = np.zeros((S, 3), np.float64)
    _sparse_grads(
        x_SBD.contiguous().numpy(),
        b_dec_SD.numpy(),
        W_dec_SKD.numpy(),
        entries.offsets.numpy(),
        entries.latent.numpy(),
        entries.value.numpy(),
        brackets(widths),
        len(widths),
        l1_w_SK.contiguous().numpy(),
        np.float32(l1_over_B),
        g_W_dec.numpy(),
        g_W_encT.numpy(),
        g_b_enc.numpy(),
        g_b_dec.numpy(),
        sum_h,
        h_max,
        sums,
    )
    as_t = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return as_t(sum_h), as_t(h_max), as_t(sums[:, 0]), as_t(sums[:, 1]), as_t(sums[:, 2])


@numba.njit(cache=True, nogil=True, fastmath=True)
def _sparse_grads(
    x_SBD, b_dec_SD, W_dec_SKD, offsets, latent, value, bracket_K, m, l1_w_SK, l1_over_B,
    g_W_dec_SKD, g_W_encT_SKD, g_b_enc_SK, g_b_dec_SD, sum_h_SK, h_max_SK, sums_S3,
):  # fmt: skip
    """Two passes per SAE. By sample (the entries' CSR order): the prefix reconstructions from its
    entries, their errors, and the suffix sums E_t (2/B sum_{s >= t} e_s), kept for every sample
    [B, m, D]. By latent (the entries counting-sorted by latent): per entry grad_h = E_t . W_j + l1
    w_j / B, and latent j's rows of the W_dec and W_enc^T gradients summed in place while they and
    W_j stay in the L1 cache: each entry reads two rows (E_b, x_b - b_dec), where scattering into
    the gradients by sample would read and write four."""
    S, B, D = x_SBD.shape
    K = W_dec_SKD.shape[1]
    two_over_B = np.float32(2.0 / B)
    E_BmD = np.empty((B, m, D), np.float32)
    xc_BD = np.empty((B, D), np.float32)
    start_K1 = np.empty(K + 1, np.int64)
    cursor_K = np.empty(K, np.int64)
    for s in range(S):
        W = W_dec_SKD[s]
        bias = b_dec_SD[s]
        gW, gE, gbe, gbd = g_W_dec_SKD[s], g_W_encT_SKD[s], g_b_enc_SK[s], g_b_dec_SD[s]
        gbd[:] = 0.0
        for b in range(B):
            r = s * B + b
            x = x_SBD[s, b]
            E = E_BmD[b]
            xc = xc_BD[b]
            E[:] = 0.0
            e, end = offsets[r], offsets[r + 1]
            while e + 4 <= end and m == 1:  # four rows a pass: a quarter of the stores
                v0, v1, v2, v3 = value[e], value[e + 1], value[e + 2], value[e + 3]
                W0, W1, W2, W3 = W[latent[e]], W[latent[e + 1]], W[latent[e + 2]], W[latent[e + 3]]
                E_t = E[0]
                for d in range(D):
                    E_t[d] += v0 * W0[d] + v1 * W1[d] + v2 * W2[d] + v3 * W3[d]
                e += 4
            for e in range(e, end):
                W_j, E_t, v = W[latent[e]], E[bracket_K[latent[e]]], value[e]
                for d in range(D):
                    E_t[d] += v * W_j[d]
            # running sums over brackets: the error of each prefix reconstruction
            for d in range(D):
                xc[d] = x[d] - bias[d]
                run = -xc[d]
                for t in range(m):
                    run += E[t, d]
                    E[t, d] = run
            for t in range(m):
                q = np.float32(0.0)
                for d in range(D):
                    q += E[t, d] * E[t, d]
                sums_S3[s, 0 if t == m - 1 else 1] += q
            for t in range(m - 2, -1, -1):
                for d in range(D):
                    E[t, d] += E[t + 1, d]
            for t in range(m):
                for d in range(D):
                    E[t, d] *= two_over_B
            for d in range(D):
                gbd[d] += E[0, d]
        # the entries of SAE s by latent (counting sort; samples stay in order within a latent)
        first, last = offsets[s * B], offsets[(s + 1) * B]
        start_K1[:] = 0
        for e in range(first, last):
            start_K1[latent[e] + 1] += 1
        for j in range(K):
            start_K1[j + 1] += start_K1[j]
        cursor_K[:] = start_K1[:K]
        sample_n = np.empty(last - first, np.int64)
        value_n = np.empty(last - first, np.float32)
        gh_n = np.empty(last - first, np.float32)
        for b in range(B):
            for e in range(offsets[s * B + b], offsets[s * B + b + 1]):
                n = cursor_K[latent[e]]
                sample_n[n] = b
                value_n[n] = value[e]
                cursor_K[latent[e]] += 1
        for j in range(K):
            t = bracket_K[j]
            l1_j = l1_over_B * l1_w_SK[s, j]
            gW[j, :] = 0.0
            gE[j, :] = 0.0
            g_bias, h_sum, h_max = np.float32(0.0), np.float32(0.0), np.float32(0.0)
            W_j, gW_j, gE_j = W[j], gW[j], gE[j]
            for n in range(start_K1[j], start_K1[j + 1]):
                E_b = E_BmD[sample_n[n], t]
                dot = np.float32(0.0)
                for d in range(D):
                    dot += E_b[d] * W_j[d]
                gh_n[n] = dot + l1_j
                g_bias += gh_n[n]
                h_sum += value_n[n]
                h_max = max(h_max, value_n[n])
            n, end = start_K1[j], start_K1[j + 1]
            while n + 4 <= end:  # four entries a pass: a quarter of the stores
                b0, b1, b2, b3 = sample_n[n], sample_n[n + 1], sample_n[n + 2], sample_n[n + 3]
                v0, v1, v2, v3 = value_n[n], value_n[n + 1], value_n[n + 2], value_n[n + 3]
                E0, E1, E2, E3 = E_BmD[b0, t], E_BmD[b1, t], E_BmD[b2, t], E_BmD[b3, t]
                for d in range(D):
                    gW_j[d] += v0 * E0[d] + v1 * E1[d] + v2 * E2[d] + v3 * E3[d]
                g0, g1, g2, g3 = gh_n[n], gh_n[n + 1], gh_n[n + 2], gh_n[n + 3]
                x0, x1, x2, x3 = xc_BD[b0], xc_BD[b1], xc_BD[b2], xc_BD[b3]
                for d in range(D):
                    gE_j[d] += g0 * x0[d] + g1 * x1[d] + g2 * x2[d] + g3 * x3[d]
                n += 4
            for n in range(n, end):
                v, gh, E_b, xc_b = value_n[n], gh_n[n], E_BmD[sample_n[n], t], xc_BD[sample_n[n]]
                for d in range(D):
                    gW_j[d] += v * E_b[d]
                    gE_j[d] += gh * xc_b[d]
            gbe[j] = g_bias
            sum_h_SK[s, j] = h_sum
            h_max_SK[s, j] = h_max
            sums_S3[s, 2] += l1_w_SK[s, j] * h_sum


@numba.njit(cache=True, nogil=True)
def _emit(pre_BK, threshold, keep_equal_B, capacity):
    """The entries v > threshold, or v == threshold while row b's keep_equal_B[b] lasts
    (a negative threshold never arises: only positive values are kept), as CSR."""
    B, K = pre_BK.shape
    offsets = np.zeros(B + 1, np.int64)
    latent = np.empty(capacity, np.int64)
    value = np.empty(capacity, np.float32)
    n = 0
    for b in range(B):
        left = keep_equal_B[b]
        t = threshold[b]
        for j in range(K):
            v = pre_BK[b, j]
            if v > t or (v == t and v > 0 and left > 0):
                if v == t:
                    left -= 1
                latent[n] = j
                value[n] = v
                n += 1
        offsets[b + 1] = n
    return offsets, latent[:n], value[:n]


@numba.njit(cache=True, nogil=True)
def _keep_positive(pre_BK):
    B, K = pre_BK.shape
    return _emit(pre_BK, np.zeros(B, np.float32), np.zeros(B, np.int64), B * K)


@numba.njit(cache=True, nogil=True)
def _candidates(flat, low, index, value):
    """The positive values >= low, with their flat indices, in order; returns their number. Most
    values fail: a vectorised pass marks the passing ones, a branch-free pass lists the 8-value
    words holding any, and only those words' values are written out (branch-free too: a written
    slot is kept only if its value passes)."""
    N = flat.shape[0]
    passes = np.empty(N + 8, np.uint8)
    for i in range(N):
        v = flat[i]
        passes[i] = (v >= low) & (v > 0)
    passes[N:] = 0
    words = passes[: (N + 7) // 8 * 8].view(np.uint64)
    busy = np.empty(words.shape[0], np.int64)
    m = 0
    for w in range(words.shape[0]):
        busy[m] = w
        m += words[w] != 0
    n = 0
    for w in busy[:m]:
        for i in range(w * 8, min(w * 8 + 8, N)):
            index[n] = i
            value[n] = flat[i]
            n += passes[i]
    return n


@numba.njit(cache=True, nogil=True)
def _keep_batch_top(pre_BK, count, guess):
    """BatchTopK: the `count` largest positive values of the batch, exactly. Only the values at least
    `guess` (a lower bound expected to hold a few more than `count`: `THRESHOLD_GUESS` x the last
    threshold) are collected and partitioned; if fewer than `count` are, those at least `GUESS_RETRY`
    x the guess, then every positive value. Returns (the smallest kept value, offsets, latent, value)."""
    B, K = pre_BK.shape
    flat = pre_BK.reshape(-1)
    index = np.empty(flat.shape[0] + 1, np.int64)
    value = np.empty(flat.shape[0] + 1, np.float32)
    n = _candidates(flat, guess, index, value)
    if n < count and guess > 0:
        n = _candidates(flat, np.float32(GUESS_RETRY * guess), index, value)
    if n < count and guess > 0:
        n = _candidates(flat, np.float32(0.0), index, value)
    index, value = index[:n], value[:n]
    if n <= count:  # every positive value is kept
        threshold, keep_equal = np.float32(0.0), 0
        kept_min = value.min() if n > 0 else np.float32(0.0)
    else:
        threshold = _kth_largest_binned(value, n, count)
        greater = 0
        for v in value:
            if v > threshold:
                greater += 1
        keep_equal = count - greater  # of the values equal to the threshold, the first in row order
        kept_min = threshold
    offsets = np.zeros(B + 1, np.int64)
    latent = np.empty(min(n, count), np.int64)
    kept = np.empty(min(n, count), np.float32)
    m, row, row_end = 0, 0, K  # candidates come in row order: track the row (no division)
    for c in range(n):
        v = value[c]
        if v > threshold or (v == threshold and keep_equal > 0):
            if v == threshold:
                keep_equal -= 1
            i = index[c]
            while i >= row_end:
                offsets[row + 1] = m
                row += 1
                row_end += K
            latent[m] = i - (row_end - K)
            kept[m] = v
            m += 1
    while row < B:
        offsets[row + 1] = m
        row += 1
    return kept_min, offsets, latent[:m], kept[:m]


SELECT_BINS = 4096
"""`_kth_largest_binned`: bins of the histogram that narrows a large selection to one bin."""


@numba.njit(cache=True, nogil=True)
def _kth_largest_binned(a, n, k):
    """The k-th largest of a[:n] (1 <= k <= n), as `_kth_largest` but faster on many values (a
    batch's candidates): a histogram over `SELECT_BINS` equal bins between their min and max finds
    the bin holding it, and only that bin's values are partitioned (quickselect mispredicts a branch
    per comparison: 0.44 ms on 40k values, measured). `a` is left as it was."""
    lo, hi = a[0], a[0]
    for i in range(n):
        lo, hi = min(lo, a[i]), max(hi, a[i])
    if not hi - lo < np.inf or hi == lo:  # infinite spread (no bins) or one value
        return _kth_largest(a[:n].copy(), n, k)
    scale = SELECT_BINS / (np.float64(hi) - np.float64(lo))
    counts = np.zeros(SELECT_BINS, np.int64)
    for i in range(n):
        counts[_select_bin(a[i], lo, scale)] += 1
    bin_, above = SELECT_BINS - 1, 0
    while above + counts[bin_] < k:
        above += counts[bin_]
        bin_ -= 1
    inside = np.empty(counts[bin_], a.dtype)
    m = 0
    for i in range(n):
        if _select_bin(a[i], lo, scale) == bin_:
            inside[m] = a[i]
            m += 1
    return _kth_largest(inside, m, k - above)


@numba.njit(cache=True, nogil=True, inline="always")
def _select_bin(v, lo, scale):
    """`_kth_largest_binned`'s bin of value v: monotone in v, one expression for both its passes."""
    return min(int((np.float64(v) - lo) * scale), SELECT_BINS - 1)


@numba.njit(cache=True, nogil=True)
def _kth_largest(a, n, k):
    """The k-th largest of a[:n] (1 <= k <= n), reordering a in place (quickselect)."""
    lo, hi, target = 0, n - 1, k - 1  # the target position in descending order
    while lo < hi:
        mid = (lo + hi) // 2
        pivot = max(min(a[lo], a[mid]), min(max(a[lo], a[mid]), a[hi]))  # median of three
        i, j = lo, hi
        while i <= j:
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return a[target]
    return a[target]


@numba.njit(cache=True, nogil=True)
def _keep_row_top(pre_BK, k):
    """TopK: each row's k largest positive values (a partition of the row's positive values)."""
    B, K = pre_BK.shape
    threshold = np.zeros(B, np.float32)
    keep_equal = np.zeros(B, np.int64)
    positive = np.empty(K + 1, np.float32)
    for b in range(B):
        n = 0
        for j in range(K):  # branch-free, as `_candidates`
            v = pre_BK[b, j]
            positive[n] = v
            n += v > 0
        if n <= k:
            continue  # every positive value: threshold 0
        t = _kth_largest(positive, n, k)
        greater = 0
        for j in range(K):
            if pre_BK[b, j] > t:
                greater += 1
        threshold[b] = t
        keep_equal[b] = k - greater
    return _emit(pre_BK, threshold, keep_equal, B * k)


def warm_up() -> None:
    """Compile (or load) the kernels on scratch, so no training step pays it."""
    pre = np.ones((2, 3), np.float32)
    _keep_positive(pre)
    _keep_row_top(pre, 1)
    _keep_batch_top(pre, 2, np.float32(0.5))
    z = torch.zeros
    entries = compiled_keep(torch.ones(1, 2, 3), "relu", None)
    compiled_sparse_grads(
        z(1, 2, 4), z(1, 4), z(1, 3, 4), entries, (3,), z(1, 3), 0.0,
        z(1, 3, 4), z(1, 3, 4), z(1, 3), z(1, 4),
    )  # fmt: skip
