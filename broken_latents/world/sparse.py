"""The sparse path: each sample is the list of features that fire, with their magnitudes, and its
input x = sum magnitude x direction (+ bias); the SAEs train on x. Cost per sample grows with
L0 x dim (plus, with correlation, rank x features for the copula), not with the feature count.

Firing without drawing every feature: features sorted by rate form blocks of BLOCK; in a block whose
largest rate is q, candidates come by geometric skips (one log per candidate) and each is kept with
probability rate / q, which is exactly Bernoulli(rate) per feature. With a copula the rate of feature
i given the shared factor e is P(eta > z_i), z_i = (t_i - L_i . e) / sqrt(d_i); q is then the block's
largest conditional rate. Then the hierarchy (`laws.Structure`) on the short list, depth by depth, as
SAELens applies it, and x. `World.sample` (model.dense_reference) draws the same law densely;
tests/world/test_sparse.py compares the two.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass

import numba
import numpy as np
import torch

BLOCK = 32
"""Features per block of the thinning: smaller blocks bound the rates tighter, larger ones cost fewer logs."""

DENSE_BLOCK_RATE = 0.25
"""Blocks whose bound q is at least this draw one uniform per feature (cheaper than skips there)."""


@dataclass
class SparseBatch:
    """A batch of every seed: inputs and, per seed r, the firing features of sample b as
    indices[r][offsets[r][b]:offsets[r][b + 1]] with magnitudes values[r][...] (CSR)."""

    x_RBD: torch.Tensor
    indices: list[np.ndarray]
    values: list[np.ndarray]
    offsets: list[np.ndarray]
    n_features: int

    def features_RNB(self) -> torch.Tensor:
        """The feature magnitudes as a dense f_RNB (small worlds only: R x N x B floats)."""
        R, B = len(self.indices), self.x_RBD.shape[1]
        f = torch.zeros(R, self.n_features, B)
        for r in range(R):
            rows = np.repeat(np.arange(B), np.diff(self.offsets[r]))
            f[r, torch.from_numpy(self.indices[r]), torch.from_numpy(rows)] = torch.from_numpy(self.values[r])
        return f.to(self.x_RBD.device)

    def l0_R(self) -> np.ndarray:
        return np.array([len(ix) / (len(off) - 1) for ix, off in zip(self.indices, self.offsets)])


class SparseSampler:
    """Seed r draws from its own SFC64 generator seeded by (offset, r), as the dense DataStream."""

    def __init__(self, world, seeds: list[int], offset: int = 0):
        self.states_R4 = np.stack([np.random.SFC64([offset, seed]).state["state"]["state"] for seed in seeds])
        self.n = n = world.n_features
        rates = world.rates_N.cpu().double().numpy()
        order = np.argsort(-rates, kind="stable").astype(np.int64)
        padded = np.concatenate([rates[order], np.zeros((-n) % BLOCK)])
        self.block_q = padded.reshape(-1, BLOCK).max(1)
        means = world.magnitudes_N.cpu().double().numpy()
        stds = np.zeros(n) if world.magnitude_stds_N is None else world.magnitude_stds_N.cpu().double().numpy()
        if world.correlation is not None:
            factor, diag = world.correlation
            self.factor_T = np.ascontiguousarray(factor.T.astype(np.float32))  # [rank, N]
            with np.errstate(divide="ignore"):
                thresholds = math.sqrt(2) * torch.special.erfinv(torch.from_numpy(1 - 2 * rates)).numpy()
            corr = (thresholds, np.sqrt(diag.astype(np.float64)))
        else:
            self.factor_T = np.zeros((0, n), np.float32)
            corr = (np.zeros(n), np.ones(n))
        s = world.structure
        self.world_arrays = (order, self.block_q, rates, means, stds, *corr,
                             s.parent_N, s.depth_N, s.rescale_N, s.group_N, max(s.groups, 1),
                             s.force_parents_H, s.force_offsets_H1, s.force_children,
                             world.directions_ND.cpu().float().numpy(),
                             (torch.zeros(world.config.dim) if world.bias_D is None else world.bias_D.cpu()).float().numpy())
        self.dim = world.config.dim
        self.capacity = 64

    def draw(self, batch: int, out_RBD: np.ndarray | None = None) -> SparseBatch:
        R = len(self.states_R4)
        x = np.empty((R, batch, self.dim), np.float32) if out_RBD is None else out_RBD
        indices, values, offsets = [], [], []
        rank = self.factor_T.shape[0]
        for r in range(R):
            if rank:
                eps = np.empty((batch, rank), np.float32)
                _normals(self.states_R4[r], eps)
                A_BN = eps @ self.factor_T  # BLAS, GIL released
            else:
                A_BN = np.zeros((batch, 0), np.float32)
            idx, val, off = _draw(self.states_R4[r], A_BN, *self.world_arrays, x[r], self.capacity)
            self.capacity = max(self.capacity, len(idx) // batch + 8)
            indices.append(idx)
            values.append(val)
            offsets.append(off)
        return SparseBatch(torch.from_numpy(x), indices, values, offsets, self.n)


class SparseStream:
    """`DataStream` for sparse worlds: `next()` gives a `SparseBatch` (its `x_RBD` on `device`), drawn
    ahead in a thread with `prefetch` (the compiled sampler and BLAS release the GIL)."""

    def __init__(self, world, seeds: list[int], batch: int, device="cpu", offset: int = 0, chunk: int = 1,
                 prefetch: bool = False):
        self.sampler = SparseSampler(world, seeds, offset)
        self.batch, self.device = batch, device or "cpu"
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        if prefetch:
            self.sampler.draw(2)  # compile or load the sampler here, not in the timed loop (advances no seed's
            self.sampler = SparseSampler(world, seeds, offset)  # stream: a fresh sampler starts over)
            self._queue = queue.Queue(maxsize=2)
            self._thread = threading.Thread(target=self._produce, daemon=True)
            self._thread.start()

    def next(self) -> SparseBatch:
        item = self._draw() if self._queue is None else self._take()
        item.x_RBD = item.x_RBD.to(self.device)
        return item

    def _draw(self) -> SparseBatch:
        return self.sampler.draw(self.batch)

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._draw()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # surfaced to the trainer by _take
            self._error = err

    def _take(self) -> SparseBatch:
        while True:
            try:
                return self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._error is not None:
                    raise self._error
                if not self._thread.is_alive():
                    raise RuntimeError("the sampling thread stopped")

    def close(self) -> None:
        self._stop.set()
        if self._queue is not None:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=10)

    def __enter__(self) -> "SparseStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- compiled sampler -----------------------------------------------------------------------

@numba.njit(cache=True, nogil=True, inline="always")
def _next(s):
    """SFC64, as numpy's (and world/stream.py's)."""
    tmp = s[0] + s[1] + s[3]
    s[3] += np.uint64(1)
    s[0] = s[1] ^ (s[1] >> np.uint64(11))
    s[1] = s[2] + (s[2] << np.uint64(3))
    s[2] = ((s[2] << np.uint64(24)) | (s[2] >> np.uint64(40))) + tmp
    return tmp


@numba.njit(cache=True, nogil=True, inline="always")
def _uniform(s):
    """Uniform in (0, 1] from the top 53 bits of one word (never 0: its log is finite)."""
    return (np.float64(_next(s) >> np.uint64(11)) + 1.0) * 2.0**-53


@numba.njit(cache=True, nogil=True, inline="always")
def _normal(s):
    """One standard normal per word (Box-Muller, cosine branch), as model.normal_from_word."""
    w = _next(s)
    u1 = (np.float64(w >> np.uint64(32)) + 1.0) * 2.0**-32
    u2 = np.float64(w & np.uint64(0xFFFFFFFF)) * 2.0**-32
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@numba.njit(cache=True, nogil=True)
def _normals(s, out):
    flat = out.reshape(-1)
    for i in range(flat.shape[0]):
        flat[i] = _normal(s)


@numba.njit(cache=True, nogil=True, inline="always")
def _upper_tail(z):
    """P(N(0, 1) > z)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@numba.njit(cache=True, nogil=True, inline="always")
def _magnitude(s, mean, std):
    if std > 0:
        return max(mean + std * _normal(s), 0.0)
    return mean


@numba.njit(cache=True, nogil=True)
def _draw(s, A_BN, order, block_q, rates, means, stds, thresholds, sdiag, parent, depth, rescale, group, n_groups,
          fparents, foffsets, fchildren, F_ND, bias_D, x_BD, capacity):
    B, D = x_BD.shape
    N = rates.shape[0]
    correlated = A_BN.shape[1] > 0
    n_blocks = block_q.shape[0]
    gated = False
    for i in range(N):
        if parent[i] >= 0:
            gated = True
            break
    value = np.zeros(N)            # scratch: this sample's magnitudes (zero outside `listed`)
    listed = np.empty(N, np.int64)  # this sample's candidates that fired
    z = np.empty(N)
    count = np.zeros(n_groups, np.int64)
    winner = np.full(n_groups, -1, np.int64)
    cap = max(capacity * B, 16)
    idx_out = np.empty(cap, np.int64)
    val_out = np.empty(cap, np.float32)
    offsets = np.zeros(B + 1, np.int64)
    pos = 0
    for b in range(B):
        k = 0
        if correlated:
            for i in range(N):
                z[i] = (thresholds[i] - A_BN[b, i]) / sdiag[i]
        for blk in range(n_blocks):
            start = blk * BLOCK
            size = min(BLOCK, N - start)
            if correlated:
                zmin = np.inf
                for j in range(size):
                    zmin = min(zmin, z[order[start + j]])
                q = _upper_tail(zmin)
            else:
                q = block_q[blk]
            if q <= 0.0:
                continue
            if q >= DENSE_BLOCK_RATE:
                for j in range(size):
                    i = order[start + j]
                    p = _upper_tail(z[i]) if correlated else rates[i]
                    if _uniform(s) <= p:
                        listed[k] = i
                        k += 1
                continue
            log_miss = math.log1p(-q)
            j = -1
            while True:
                j += 1 + int(math.floor(math.log(_uniform(s)) / log_miss))
                if j >= size:
                    break
                i = order[start + j]
                p = _upper_tail(z[i]) if correlated else rates[i]
                if _uniform(s) * q <= p:
                    listed[k] = i
                    k += 1
        # magnitudes (a firing clipped to 0 is inactive, as in SAELens)
        kept = 0
        for e in range(k):
            i = listed[e]
            v = _magnitude(s, means[i], stds[i])
            if v > 0:
                value[i] = v
                listed[kept] = i
                kept += 1
        k = kept
        if gated and k > 1:
            # depth order (insertion sort: the list is short), then gate and exclude depth by depth
            for e in range(1, k):
                item = listed[e]
                f = e - 1
                while f >= 0 and depth[listed[f]] > depth[item]:
                    listed[f + 1] = listed[f]
                    f -= 1
                listed[f + 1] = item
        if gated:
            e = 0
            while e < k:
                d = depth[listed[e]]
                end = e
                while end < k and depth[listed[end]] == d:
                    end += 1
                for f in range(e, end):
                    i = listed[f]
                    p = parent[i]
                    if p >= 0:
                        pv = value[p]
                        if pv <= 0:
                            value[i] = 0.0
                        elif rescale[i]:
                            value[i] *= pv / means[p]
                for f in range(e, end):  # one uniformly drawn survivor per exclusive group
                    i = listed[f]
                    g = group[i]
                    if g >= 0 and value[i] > 0:
                        count[g] += 1
                        if _uniform(s) * count[g] <= 1.0:
                            winner[g] = i
                for f in range(e, end):
                    i = listed[f]
                    g = group[i]
                    if g >= 0:
                        if value[i] > 0 and winner[g] != i:
                            value[i] = 0.0
                        count[g] = 0
                e = end
        for h in range(fparents.shape[0] - 1, -1, -1):  # explicit force relations, bottom-up
            p = fparents[h]
            if value[p] > 0:
                continue
            for f in range(foffsets[h], foffsets[h + 1]):
                if value[fchildren[f]] > 0:
                    v = _magnitude(s, means[p], stds[p])
                    if v > 0:
                        value[p] = v
                        listed[k] = p
                        k += 1
                    break
        # x = bias + sum v F; the list out, scratch back to zero
        if pos + k > cap:
            cap = max(2 * cap, pos + k)
            grown_i = np.empty(cap, np.int64)
            grown_v = np.empty(cap, np.float32)
            grown_i[:pos] = idx_out[:pos]
            grown_v[:pos] = val_out[:pos]
            idx_out, val_out = grown_i, grown_v
        row = x_BD[b]
        for d in range(D):
            row[d] = bias_D[d]
        for e in range(k):
            i = listed[e]
            v = value[i]
            if v > 0:
                vf = np.float32(v)
                for d in range(D):
                    row[d] += vf * F_ND[i, d]
                idx_out[pos] = i
                val_out[pos] = vf
                pos += 1
            value[i] = 0.0
        offsets[b + 1] = pos
    return idx_out[:pos].copy(), val_out[:pos].copy(), offsets
