"""The sparse path: each sample is the list of features that fire, with their magnitudes, and its
input x = sum magnitude x direction (+ bias); the SAEs train on x. Cost per sample grows with
L0 x dim (plus, with correlation, rank x features for the copula), not with the feature count.

Firing without drawing every feature: features sorted by rate form blocks of BLOCK; in a block whose
largest rate is at most q, candidates come by geometric skips (one log per candidate) and each is kept with
probability rate / q, which is exactly Bernoulli(rate) per feature. With a copula the rate of feature
i given the shared factor e is P(eta > z_i), z_i = (t_i - L_i . e) / sqrt(d_i); q is then the normal's tail
at a table point at or below the block's smallest z, and "u <= P(eta > z)" is decided from the same table,
with erfc only when u falls between two table points (`_below_tail`): the law is exact, not approximated.
Then the hierarchy (`laws.Structure`) on the short list, depth by depth, as
SAELens applies it (a child is drawn only when its parent is active: children of inactive parents
never fire, so drawing them changes nothing but the cost), and x. `World.sample` (model.dense_reference) draws the same law densely;
tests/world/test_sparse.py compares the two.

Measured (SynthSAEBench-16k laws scaled, batch 1024, one thread, CPU time so the machine's load does not
count; 2026-12-06, the sampler before (3d983bd) beside this one in one process, benchmarks/bench_sampler.py):
2048 x 256, 299k inputs per
CPU-second (before: 115k; L0 10.9); 4096 x 256, 173k (before: 70k; L0 16.1). SAELens on the same worlds, one
thread, CPU time: 10.2k and 4.9k. What it took (benchmarks/results-scale.md): the generator's state passed
as a tuple of words (world/rng.py; arrays handed to the inlined helpers cost two atomic reference-count
updates a call, a third of the time), the tail table instead of an erfc and a log1p per block and per
candidate, a ziggurat for the normals, the block minima vectorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch

from .prefetch import Prefetcher
from .rng import normal, uniform

BLOCK = 32
"""Features per block of the thinning: smaller blocks bound the rates tighter, larger ones cost fewer logs."""

DENSE_BLOCK_RATE = 0.25
"""Blocks whose bound q is at least this draw one uniform per feature (cheaper than skips there)."""

TAIL_FROM, TAIL_SCALE, TAIL_POINTS = -8.0, 64.0, 1025
"""The normal's upper tail is tabulated at z = TAIL_FROM + k / TAIL_SCALE, k < TAIL_POINTS (to +8)."""


def _tail_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(N(0, 1) > z) at the table's points; per point taken as a block's bound q, log(1 - q) (the
    geometric skips) and (1 - q)^BLOCK, the chance that a block of BLOCK features has no candidate."""
    z = TAIL_FROM + np.arange(TAIL_POINTS) / TAIL_SCALE
    tail = np.array([0.5 * math.erfc(v / math.sqrt(2)) for v in z])
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-tail)
    return tail, log_miss, np.exp(BLOCK * log_miss)


TAIL_TABLES = _tail_tables()
TAIL = TAIL_TABLES[0]  # a global: the compiled code holds it as a constant (no reference counting)


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
            f[r, torch.from_numpy(self.indices[r]), torch.from_numpy(rows)] = torch.from_numpy(
                self.values[r]
            )
        return f.to(self.x_RBD.device)

    def l0_R(self) -> np.ndarray:
        return np.array([len(ix) / (len(off) - 1) for ix, off in zip(self.indices, self.offsets)])


class SparseSampler:
    """Seed r draws from its own SFC64 generator seeded by (offset, r), as the dense DataStream."""

    def __init__(self, world, seeds: list[int], offset: int = 0):
        self.states_R4 = np.stack(
            [np.random.SFC64([offset, seed]).state["state"]["state"] for seed in seeds]
        )
        self.n = n = world.n_features
        rates = world.rates_N.cpu().double().numpy()
        s = world.structure
        # Blocks over the free features only: a gated child is drawn when its parent fires, never before.
        free = np.flatnonzero(s.parent_N < 0)
        order = free[np.argsort(-rates[free], kind="stable")].astype(np.int64)
        gated = np.flatnonzero(s.parent_N >= 0)
        by_parent = gated[np.argsort(s.parent_N[gated], kind="stable")]
        child_offsets = np.searchsorted(s.parent_N[by_parent], np.arange(n + 1)).astype(np.int64)
        means = world.magnitudes_N.cpu().double().numpy()
        stds = (
            np.zeros(n)
            if world.magnitude_stds_N is None
            else world.magnitude_stds_N.cpu().double().numpy()
        )
        # Feature i fires when a standard normal exceeds its threshold t_i (rate = P(N > t_i)); with the
        # copula, the normal is L_i . e + sqrt(d_i) eta, e the sample's shared factor.
        with np.errstate(divide="ignore"):
            thresholds = (
                math.sqrt(2) * torch.special.erfinv(torch.from_numpy(1 - 2 * rates)).numpy()
            )
        if world.correlation is not None:
            factor, diag = world.correlation
            factor_NR = factor.astype(np.float32)
            sdiag = np.sqrt(diag.astype(np.float64))
        else:
            factor_NR = np.zeros((n, 0), np.float32)
            sdiag = np.ones(n)
        self.rank = factor_NR.shape[1]
        self.free_factor_T = np.ascontiguousarray(factor_NR[order].T)  # [rank, free in `order`]
        # Per feature: threshold, 1 / sqrt(d), loadings (children in the order they are drawn, siblings adjacent).
        self.copula = tuple(
            np.ascontiguousarray(a)
            for of in (order, by_parent)
            for a in (thresholds[of].astype(np.float32), (1 / sdiag[of]).astype(np.float32))
        ) + (np.ascontiguousarray(factor_NR[by_parent]),)
        self.world_arrays = (
            *TAIL_TABLES[1:],
            order,
            means,
            stds,
            child_offsets,
            by_parent.astype(np.int64),
            s.rescale_N,
            s.group_N,
            max(s.groups, 1),
            s.force_parents_H,
            s.force_offsets_H1,
            s.force_children,
            world.directions_ND.cpu().float().numpy(),
            (torch.zeros(world.config.dim) if world.bias_D is None else world.bias_D.cpu())
            .float()
            .numpy(),
        )
        self.dim = world.config.dim
        self.capacity = 64

    def draw(self, batch: int, out_RBD: np.ndarray | None = None) -> SparseBatch:
        R = len(self.states_R4)
        x = np.empty((R, batch, self.dim), np.float32) if out_RBD is None else out_RBD
        indices, values, offsets = [], [], []
        for r in range(R):
            eps = np.empty((batch, self.rank), np.float32)
            _normals(self.states_R4[r], eps)
            # the free features' shared part, by BLAS (GIL released); without correlation none (not B x F zeros)
            A_BF = eps @ self.free_factor_T if self.rank else np.empty((batch, 0), np.float32)
            idx, val, off = _draw(
                self.states_R4[r],
                eps,
                A_BF,
                *self.copula,
                *self.world_arrays,
                x[r],
                self.capacity,
            )
            self.capacity = max(self.capacity, len(idx) // batch + 8)
            indices.append(idx)
            values.append(val)
            offsets.append(off)
        return SparseBatch(torch.from_numpy(x), indices, values, offsets, self.n)


class SparseStream:
    """`DataStream` for sparse worlds: `next()` gives a `SparseBatch` (its `x_RBD` on `device`), drawn
    ahead in a thread with `prefetch` (the compiled sampler and BLAS release the GIL)."""

    def __init__(
        self,
        world,
        seeds: list[int],
        batch: int,
        device="cpu",
        offset: int = 0,
        chunk: int = 1,
        prefetch: bool = False,
    ):
        self.sampler = SparseSampler(world, seeds, offset)
        self.batch, self.device = batch, device or "cpu"
        self.prefetcher: Prefetcher | None = None
        if prefetch:
            # Compile or load the sampler here, not in the timed loop; the draw advanced the seeds'
            # streams, so a fresh sampler starts them over.
            self.sampler.draw(2)
            self.sampler = SparseSampler(world, seeds, offset)
            self.prefetcher = Prefetcher(self._draw, 2)

    def next(self) -> SparseBatch:
        item = self._draw() if self.prefetcher is None else self.prefetcher.take()
        item.x_RBD = item.x_RBD.to(self.device)
        return item

    def _draw(self) -> SparseBatch:
        return self.sampler.draw(self.batch)

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()

    def __enter__(self) -> SparseStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- compiled sampler -----------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _normals(s, out):
    """Fill out with standard normals from the generator state array s (advanced in place)."""
    st = (s[0], s[1], s[2], s[3])
    flat = out.reshape(-1)
    for i in range(flat.shape[0]):
        flat[i], st = normal(st)
    s[0], s[1], s[2], s[3] = st


@numba.njit(cache=True, nogil=True, inline="always")
def _upper_tail(z):
    """P(N(0, 1) > z)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@numba.njit(cache=True, nogil=True, inline="always")
def _below_tail(u, z):
    """u <= P(N(0, 1) > z), exactly, mostly without erfc: the tail is decreasing, so where z lies between
    two points of the table, u below the table's value at the right one is below it, u above the value
    at the left one is above; only a u between the two needs erfc (for a uniform u, a chance of at most
    max density / TAIL_SCALE = 0.4 / 64, 0.6%)."""
    t = (z - TAIL_FROM) * TAIL_SCALE
    if t >= 0.0 and t < TAIL_POINTS - 1:
        k = int(t)
        if u <= TAIL[k + 1]:
            return True
        if u > TAIL[k]:
            return False
    return u <= _upper_tail(z)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot(a_GR, g, b_BR, b):
    """a[g] . b[b], summed in any order (fastmath): the rank-long loop then vectorises. Rows by index, not
    as slices: a slice is a new array reference, counted atomically."""
    total = np.float32(0.0)
    for r in range(a_GR.shape[1]):
        total += a_GR[g, r] * b_BR[b, r]
    return total


@numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz", "reassoc"})
def _block_minima(z_F, zmin_K):
    """zmin_K[k] = min of z_F over block k (no NaN assumed, so the minimum vectorises; z may be +inf)."""
    for blk in range(zmin_K.shape[0]):
        m = np.float32(np.inf)
        for j in range(blk * BLOCK, min(blk * BLOCK + BLOCK, z_F.shape[0])):
            v = z_F[j]
            m = v if v < m else m
        zmin_K[blk] = m


@numba.njit(cache=True, nogil=True, inline="always")
def _magnitude(st, mean, std):
    """(max(mean + std z, 0), next state)."""
    if std > 0:
        z, st = normal(st)
        return max(mean + std * z, 0.0), st
    return mean, st


@numba.njit(cache=True, nogil=True, inline="always")
def _exclude(st, listed, start, end, value, group, count, winner):
    """Among listed[start:end], one uniformly drawn survivor per exclusive group (reservoir sampling):
    the others' values set to 0. Returns the generator's next state."""
    for f in range(start, end):
        g = group[listed[f]]
        if g >= 0:
            count[g] += 1
            u, st = uniform(st)
            if u * count[g] <= 1.0:
                winner[g] = listed[f]
    for f in range(start, end):
        i = listed[f]
        g = group[i]
        if g >= 0:
            if winner[g] != i:
                value[i] = 0.0
            count[g] = 0
    return st


@numba.njit(cache=True, nogil=True)
def _draw(
    s,
    eps_BR,
    A_BF,
    free_thresholds,
    free_inv_sdiag,
    child_thresholds,
    child_inv_sdiag,
    child_factor_GR,
    block_log_miss_G,
    block_empty_G,
    order,
    means,
    stds,
    child_offsets,
    children,
    rescale,
    group,
    n_groups,
    fparents,
    foffsets,
    fchildren,
    F_ND,
    bias_D,
    x_BD,
    capacity,
):
    """Sample b: the free features (no gating parent) by block thinning over `order`; then, breadth-first,
    each active feature's gated children drawn one by one (a child of an inactive parent never fires,
    so it need not be drawn), scaled and made exclusive per group; then force relations; then x.

    Feature i fires when eta > z_i, z_i = (t_i - L_i . e) / sqrt(d_i) (without correlation, z_i = t_i):
    a uniform u fires it when u <= P(N(0, 1) > z_i) (`_below_tail`). A block's bound q is the tail at the
    table point at or below its smallest z, so q >= every rate in it, with log(1 - q) and the chance
    (1 - q)^BLOCK that no candidate falls in the block read from tables (no erfc, no log per block)."""
    B, D = x_BD.shape
    N = means.shape[0]
    correlated = eps_BR.shape[1] > 0
    n_free = order.shape[0]
    n_blocks = (n_free + BLOCK - 1) // BLOCK
    value = np.zeros(N)  # scratch: this sample's magnitudes (zero outside `listed`)
    listed = np.empty(N, np.int64)  # this sample's firing features, parents before children
    count = np.zeros(n_groups, np.int64)
    winner = np.full(n_groups, -1, np.int64)
    z_F = (
        free_thresholds.copy()
    )  # without correlation, the z of the free features is their threshold
    zmin_K = np.empty(n_blocks, np.float32)  # each block's smallest z
    _block_minima(z_F, zmin_K)
    cap = max(capacity * B, 16)
    idx_out = np.empty(cap, np.int64)
    val_out = np.empty(cap, np.float32)
    offsets = np.zeros(B + 1, np.int64)
    pos = 0
    st = (s[0], s[1], s[2], s[3])  # the generator's state as values (see world/rng.py)
    for b in range(B):
        if correlated:
            for j in range(n_free):  # contiguous: vectorises
                z_F[j] = (free_thresholds[j] - A_BF[b, j]) * free_inv_sdiag[j]
            _block_minima(z_F, zmin_K)
        k = 0
        for blk in range(n_blocks):
            start = blk * BLOCK
            size = min(BLOCK, n_free - start)
            t = (zmin_K[blk] - TAIL_FROM) * TAIL_SCALE
            point = 0 if t < 0.0 else (TAIL_POINTS - 1 if t >= TAIL_POINTS - 1 else int(t))
            q = 1.0 if t < 0.0 else TAIL[point]
            if q >= DENSE_BLOCK_RATE:
                for j in range(start, start + size):
                    u, st = uniform(st)
                    if _below_tail(u, z_F[j]):
                        listed[k] = order[j]
                        k += 1
                continue
            u, st = uniform(st)
            if size == BLOCK and u <= block_empty_G[point]:
                continue  # the first skip passes the block: no candidate in it
            log_miss = block_log_miss_G[point]
            j = int(math.floor(math.log(u) / log_miss))
            while j < size:
                u, st = uniform(st)
                if _below_tail(u * q, z_F[start + j]):
                    listed[k] = order[start + j]
                    k += 1
                u, st = uniform(st)
                j += 1 + int(math.floor(math.log(u) / log_miss))
        # magnitudes (a firing clipped to 0 is inactive, as in SAELens), exclusion among free features
        kept = 0
        for e in range(k):
            i = listed[e]
            v, st = _magnitude(st, means[i], stds[i])
            if v > 0:
                value[i] = v
                listed[kept] = i
                kept += 1
        st = _exclude(st, listed, 0, kept, value, group, count, winner)
        k = 0
        for e in range(kept):
            if value[listed[e]] > 0:
                listed[k] = listed[e]
                k += 1
        # children of active features, breadth-first
        e = 0
        while e < k:
            parent = listed[e]
            e += 1
            first = k
            for f in range(child_offsets[parent], child_offsets[parent + 1]):
                c = children[f]
                z = child_thresholds[f]
                if correlated:
                    z = (z - _dot(child_factor_GR, f, eps_BR, b)) * child_inv_sdiag[f]
                u, st = uniform(st)
                if not _below_tail(u, z):
                    continue
                v, st = _magnitude(st, means[c], stds[c])
                if rescale[c]:
                    v *= value[parent] / means[parent]
                if v > 0:
                    value[c] = v
                    listed[k] = c
                    k += 1
            if k - first > 1:
                st = _exclude(st, listed, first, k, value, group, count, winner)
                kept = first
                for f in range(first, k):
                    if value[listed[f]] > 0:
                        listed[kept] = listed[f]
                        kept += 1
                k = kept
        for h in range(fparents.shape[0] - 1, -1, -1):  # explicit force relations, bottom-up
            p = fparents[h]
            if value[p] > 0:
                continue
            for f in range(foffsets[h], foffsets[h + 1]):
                if value[fchildren[f]] > 0:
                    v, st = _magnitude(st, means[p], stds[p])
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
            vf = np.float32(value[i])
            for d in range(D):
                row[d] += vf * F_ND[i, d]
            idx_out[pos] = i
            val_out[pos] = vf
            pos += 1
            value[i] = 0.0
        offsets[b + 1] = pos
    s[0], s[1], s[2], s[3] = st
    return idx_out[:pos].copy(), val_out[:pos].copy(), offsets
