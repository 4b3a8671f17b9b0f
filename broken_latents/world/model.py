"""Toy worlds: known feature directions, Bernoulli firing, fixed magnitudes, parent/child co-occurrence.

Samples are drawn in *feature space*: a batch is `f_RNB`, the magnitude of every feature in
every sample (0 when it does not fire), for R independent seeds at once. The batch is the
last, contiguous axis because the fast path's products ([K, N] @ [N, B]) run several times
faster on the CPU that way round. The input is `x = f^T @ F` with `F_ND` the unit feature
directions; training works on `f` directly, which keeps the firing mask available for free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..config.schema import SPARSE_FROM, WorldConfig
from . import laws
from .directions import SEARCH_BUDGET, decorrelate, decorrelation_steps, search_work
from .saelens import SavedWorld, read_saved_world


@dataclass
class World:
    config: WorldConfig
    directions_ND: torch.Tensor
    """Unit-norm feature directions, one row per feature."""
    rates_N: torch.Tensor
    """Each feature's own firing probability (a conditional child: its rate given the parent)."""
    magnitudes_N: torch.Tensor
    """Mean magnitude of each feature when it fires."""
    magnitude_stds_N: torch.Tensor | None = None
    """Standard deviation of each firing's magnitude (before clipping at 0); None: exact magnitudes."""
    bias_D: torch.Tensor | None = None
    """The fixed input bias (world.bias); None: no bias."""
    structure: laws.Structure | None = None
    """Tree, exclusive groups and explicit relations as arrays (set for worlds on the sparse path)."""
    correlation: tuple[np.ndarray, np.ndarray] | None = None
    """Low-rank copula: factor [N, rank] and diagonal [N] (float32); None: independent firing."""

    SPARSE_FROM = SPARSE_FROM
    """Worlds with this many features or more sample sparsely (config/schema.py)."""

    def __post_init__(self) -> None:
        # Sampling runs in numpy (see `sample`); keep its constants ready.
        scaled = np.floor(self.rates_N.cpu().double().numpy() * 2.0**32)
        self._thresholds_N1 = np.minimum(scaled, 2.0**32 - 1).astype(np.uint32)[:, None]
        self._magnitudes_N1 = self.magnitudes_N.cpu().float().numpy()[:, None]
        stds = self.magnitude_stds_N
        self._stds_N1 = (
            np.zeros_like(self._magnitudes_N1)
            if stds is None
            else stds.cpu().float().numpy()[:, None]
        )
        self.tree_roots: list[laws.Node] = []  # the generated (or loaded) trees, for export
        self._stats = None  # sampled_stats' cache

    @classmethod
    def build(cls, config: WorldConfig) -> "World":
        if config.load is not None:
            return cls._from_saved(config, read_saved_world(config))
        n = config.features
        rates = np.array(laws.base_rates(config))
        mags = torch.tensor(laws.magnitude_means(config))
        stds = torch.tensor(laws.magnitude_stds(config))
        directions = feature_directions(n, config.dim, config.seed, saelens_start=config.sparse)
        roots = laws.generate_tree(n, config.tree, config.seed) if config.tree else []
        if config.tree is not None and config.tree.compensate_probabilities:
            rates = np.minimum(rates * laws.compensation(rates, roots), 1.0)
        bias = (
            laws.random_directions_and_bias(n, config.dim, config.bias, config.seed)[1]
            if config.bias > 0
            else None
        )
        correlation = (
            laws.low_rank_correlation(
                n, config.correlation.rank, config.correlation.scale, config.seed
            )
            if config.correlation
            else None
        )
        world = cls(
            config,
            directions,
            torch.tensor(rates.tolist()),
            mags,
            stds if bool((stds > 0).any()) else None,
            bias,
            None,
            correlation,
        )
        if world.sparse:
            world.structure = laws.build_structure(n, roots, world.top_down())
        world.tree_roots = roots
        return world

    @classmethod
    def _from_saved(cls, config: WorldConfig, saved: SavedWorld) -> "World":
        world = cls(
            config,
            saved.directions_ND,
            saved.rates_N,
            saved.magnitudes_N,
            saved.magnitude_stds_N,
            saved.bias_D,
            None,
            saved.correlation,
        )
        world.structure = laws.build_structure(len(saved.rates_N), saved.roots, [])
        world.tree_roots = saved.roots
        return world

    @property
    def noisy(self) -> bool:
        return self.magnitude_stds_N is not None

    @property
    def lawful(self) -> bool:
        """The config's `lawful`: a law only the sparse sampler implements."""
        return self.config.lawful

    @property
    def sparse(self) -> bool:
        """The config's `sparse`: sample as lists of the features that fire (world/sparse.py)."""
        return self.config.sparse

    @property
    def directions(self) -> torch.Tensor:
        """The unit feature directions [F, D] (`directions_ND`)."""
        return self.directions_ND

    @property
    def n_features(self) -> int:
        return self.config.features

    def to(self, device: str | torch.device) -> "World":
        stds = None if self.magnitude_stds_N is None else self.magnitude_stds_N.to(device)
        bias = None if self.bias_D is None else self.bias_D.to(device)
        moved = World(
            self.config,
            self.directions_ND.to(device),
            self.rates_N.to(device),
            self.magnitudes_N.to(device),
            stds,
            bias,
            self.structure,
            self.correlation,
        )
        moved.tree_roots = getattr(self, "tree_roots", [])
        moved._stats = getattr(self, "_stats", None)
        return moved

    # -- sampling -------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Feature magnitudes `f_NB` (float32) of `batch` samples from one seed's generator.

        Fires where 32 random bits fall below rate * 2^32: exact rates to 2^-32, and raw bits
        are several times cheaper than uniform floats (sampling is the hot loop's other half).
        A noisy world then takes one more 64-bit word per feature and sample for its magnitude
        (`normal_from_word`), firing or not, so the stream stays aligned; exact worlds take none,
        and draw what they drew before noise existed."""
        if self.sparse:
            return dense_reference(self, rng, batch).T.copy()
        n = self.n_features
        words = rng.bit_generator.random_raw((n * batch + 1) // 2)
        bits = words.view(np.uint32)[: n * batch].reshape(n, batch)
        fires = self.apply_hierarchy(bits < self._thresholds_N1)
        if not self.noisy:
            return fires * self._magnitudes_N1
        z = normal_from_word(rng.bit_generator.random_raw(n * batch).reshape(n, batch))
        magnitudes = np.maximum(
            self._magnitudes_N1 + self._stds_N1.astype(np.float64) * z, 0.0
        ).astype(np.float32)
        return fires * magnitudes

    def inputs(self, f_RNB) -> torch.Tensor:
        """x_RBD = f^T F (+ bias); a sparse stream's batch carries its inputs already."""
        if hasattr(f_RNB, "x_RBD"):
            return f_RNB.x_RBD
        x = f_RNB.transpose(-1, -2) @ self.directions_ND
        return x if self.bias_D is None else x + self.bias_D

    def apply_hierarchy(self, fires_NB: np.ndarray) -> np.ndarray:
        """Conditional children fire only with their parent (top-down); forcing children switch
        their parent on (bottom-up), so nested levels propagate."""
        for rel in self.top_down():
            if rel.mode == "conditional":
                fires_NB[rel.children] &= fires_NB[rel.parent]
        for rel in reversed(self.top_down()):
            if rel.mode == "force":
                fires_NB[rel.parent] |= fires_NB[rel.children].any(axis=0)
        return fires_NB

    def hierarchy_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The relations of `top_down()` as arrays for compiled code (see stream._apply_hierarchy):
        is-force flags, parents, offsets into the flat children (relation h: offsets[h]:offsets[h+1])."""
        relations = self.top_down()
        force = np.array([rel.mode == "force" for rel in relations], dtype=np.bool_)
        parents = np.array([rel.parent for rel in relations], dtype=np.int64)
        offsets = np.cumsum([0] + [len(rel.children) for rel in relations]).astype(np.int64)
        children = np.array([c for rel in relations for c in rel.children], dtype=np.int64)
        return force, parents, offsets, children

    def top_down(self) -> list:
        """Hierarchy relations ordered so that a parent's relation comes before its children's."""
        parent_of = {c: rel.parent for rel in self.config.hierarchy for c in rel.children}

        def depth(feature: int) -> int:
            d = 0
            while feature in parent_of:
                feature, d = parent_of[feature], d + 1
            return d

        return sorted(self.config.hierarchy, key=lambda rel: depth(rel.parent))

    def draw(self, n: int, seed: int = 0, features: bool = False):
        """n inputs x [n, D] (torch float32) from the distribution the SAEs train on: the same sampler
        (`sample`), rates, magnitudes and hierarchy; a seed gives the same draw every time. With
        `features=True`, (x [n, D], f [n, F]): f holds each feature's magnitude in each sample (0 where
        it does not fire), and x = f @ directions."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        f_NB = self.sample(np.random.Generator(np.random.SFC64(seed)), n)
        f_BN = torch.from_numpy(np.ascontiguousarray(f_NB.T)).to(self.directions_ND.device)
        x_BD = self.inputs(f_BN.T[None])[0]
        return (x_BD, f_BN) if features else x_BD

    def __repr__(self) -> str:
        c = self.config
        rates = self.rates_N
        rate_text = (
            f"{float(rates[0]):.3g}"
            if bool((rates == rates[0]).all())
            else f"{float(rates.min()):.3g}..{float(rates.max()):.3g}"
        )
        relations = len(c.hierarchy)
        return (
            f"World({c.features} features in {c.dim} dims, firing {rate_text}, "
            f"{relations} hierarchy relation{'' if relations == 1 else 's'}, seed {c.seed}; "
            f"draw(n) for inputs, .directions [F, D])"
        )

    # -- known answers --------------------------------------------------------------------

    def marginal_rates(self) -> torch.Tensor:
        """Exact probability that each feature fires, hierarchy included.

        Exact for trees of one mode; for a force-parent whose children are themselves
        forced by grandchildren, children are treated as independent, which they are.
        Worlds with a new law (see `lawful`): estimated from STATS_SAMPLES sparse samples."""
        if self.lawful:
            return torch.from_numpy(self.sampled_stats()[0]).float()
        own = self.rates_N.double().clone()
        p = own.clone()
        for rel in self.top_down():
            if rel.mode == "conditional":
                p[rel.children] = own[rel.children] * p[rel.parent]
        for rel in reversed(self.top_down()):
            if rel.mode == "force":
                off = (1 - own[rel.parent]) * torch.prod(1 - p[rel.children])
                p[rel.parent] = 1 - off
        return p.float()

    def magnitude_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """E[M] and E[M^2] of a firing's magnitude M = max(m + s Z, 0), Z standard normal."""
        if self.lawful:
            _, mean, square = self.sampled_stats()
            return torch.from_numpy(mean), torch.from_numpy(square)
        m = self.magnitudes_N.cpu().double()
        if not self.noisy:
            return m, m * m
        s = self.magnitude_stds_N.cpu().double()
        safe = torch.where(s > 0, s, torch.ones_like(s))
        t = m / safe
        cdf, pdf = torch.special.ndtr(t), torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
        mean = torch.where(s > 0, m * cdf + s * pdf, m)
        square = torch.where(s > 0, (m * m + s * s) * cdf + m * s * pdf, m * m)
        return mean, square

    def expected_mse(self) -> torch.Tensor:
        """Loss a feature costs when left out: P(fires) * E[magnitude^2] (the post's ranking, p m^2)."""
        return (self.marginal_rates().double() * self.magnitude_moments()[1]).float()

    def expected_mse_ranking(self) -> list[int]:
        return torch.argsort(self.expected_mse(), descending=True, stable=True).tolist()

    def variance(self) -> torch.Tensor:
        """What leaving a feature out costs an SAE whose decoder bias takes the feature's mean: p(1-p) m^2."""
        p = self.marginal_rates().double()
        mean, square = self.magnitude_moments()
        return (p * square - (p * mean) ** 2).float()  # p(1-p) m^2 for exact magnitudes

    def variance_ranking(self) -> list[int]:
        return torch.argsort(self.variance(), descending=True, stable=True).tolist()

    STATS_SAMPLES = 200_000

    def sampled_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P(fires), E[M | fires], E[M^2 | fires]) per feature from STATS_SAMPLES samples of the sparse
        sampler (a fixed stream), where no closed form holds (exclusion, rescaled children, correlation)."""
        if getattr(self, "_stats", None) is None:
            from .sparse import SparseSampler

            sampler = SparseSampler(self, [0], offset=0xFEED)
            n, count = self.n_features, np.zeros(self.n_features)
            total, square = np.zeros(n), np.zeros(n)
            for _ in range(self.STATS_SAMPLES // 8192):
                batch = sampler.draw(8192)
                idx, val = batch.indices[0], batch.values[0].astype(np.float64)
                count += np.bincount(idx, minlength=n)
                total += np.bincount(idx, val, minlength=n)
                square += np.bincount(idx, val * val, minlength=n)
            seen = np.maximum(count, 1)
            self._stats = (count / (self.STATS_SAMPLES // 8192 * 8192), total / seen, square / seen)
        return self._stats


def dense_reference(world: World, rng: np.random.Generator, batch: int) -> np.ndarray:
    """Feature magnitudes [batch, N] of a world with the new laws, drawn densely as SAELens does
    (every feature's decision, then the hierarchy level by level): the reference the sparse sampler
    (world/sparse.py) is tested against, and `sample` for small worlds."""
    n = world.n_features
    rates = world.rates_N.cpu().double().numpy()
    if world.correlation is not None:
        factor, diag = world.correlation
        g = rng.standard_normal((batch, factor.shape[1])) @ factor.T.astype(np.float64)
        g += rng.standard_normal((batch, n)) * np.sqrt(diag.astype(np.float64))
        fires = g > math.sqrt(2) * _erfinv(1 - 2 * rates)
    else:
        fires = rng.random((batch, n)) < rates
    means = world.magnitudes_N.cpu().double().numpy()
    stds = (
        np.zeros(n)
        if world.magnitude_stds_N is None
        else world.magnitude_stds_N.cpu().double().numpy()
    )
    drawn = np.maximum(means + stds * rng.standard_normal((batch, n)), 0.0)
    v = np.where(fires, drawn, 0.0)
    s = world.structure
    for depth in range(1, int(s.depth_N.max(initial=0)) + 1):
        at = np.flatnonzero(s.depth_N == depth)
        parent_v = v[:, s.parent_N[at]]
        factor = np.where(
            s.rescale_N[at], parent_v / means[s.parent_N[at]], (parent_v > 0).astype(np.float64)
        )
        v[:, at] *= factor
        for group in np.unique(s.group_N[at][s.group_N[at] >= 0]):
            members = at[s.group_N[at] == group]
            active = v[:, members] > 0
            score = np.where(active, rng.random(active.shape), -1.0)
            keep = np.zeros_like(active)
            keep[np.arange(batch), score.argmax(1)] = True
            v[:, members] *= keep | ~active
    for h in range(len(s.force_parents_H) - 1, -1, -1):
        parent, children = (
            s.force_parents_H[h],
            s.force_children[s.force_offsets_H1[h] : s.force_offsets_H1[h + 1]],
        )
        on = (v[:, children] > 0).any(1) & (v[:, parent] == 0)
        v[on, parent] = drawn[on, parent]
    return v.astype(np.float32)


def _erfinv(y: np.ndarray) -> np.ndarray:
    return torch.special.erfinv(torch.from_numpy(np.asarray(y, dtype=np.float64))).numpy()


def normal_from_word(words: np.ndarray) -> np.ndarray:
    """One standard normal per 64-bit word, by Box-Muller on its two 32-bit halves (the cosine
    branch only). The compiled samplers compute the same in float64 (world/rng.py)."""
    u1 = ((words >> np.uint64(32)).astype(np.float64) + 1.0) * 2.0**-32  # (0, 1]: log is finite
    u2 = (words & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def feature_directions(
    features: int, dim: int, seed: int, saelens_start: bool = False
) -> torch.Tensor:
    """Unit feature directions [features, dim]: orthonormal when dim >= features, otherwise as
    close to the Welch bound on max |cos| as we can get (see `welch_bound`).

    features == dim + 1 has an exact answer, the simplex frame (every |cos| = 1/dim); its signs
    are drawn from the seed, since which pairs have +1/dim and which -1/dim changes what an
    SAE learns (the superposition experiment's outcome depends on it). Other sizes are searched,
    except sparse worlds (`saelens_start`) and worlds too big to search: see world/directions.py."""
    if dim >= features:
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, features, generator=gen, dtype=torch.float64))
        return q.T.contiguous().float()
    if features > dim and (saelens_start or search_work(features, dim) > SEARCH_BUDGET):
        # sparse worlds (and any too big to search): SAELens' random start, decorrelated (world/directions.py)
        start = laws.random_directions_and_bias(features, dim, 0.0, seed)[0]
        return decorrelate(start, decorrelation_steps(features, dim)).contiguous()
    rng = np.random.default_rng(seed)
    if features == dim + 1:
        return torch.from_numpy(_simplex_frame(features, rng)).float()
    # One BLAS thread: these products are small, and a second thread on a busy core made the
    # search 10-20x slower (200 features in 50 dims: 0.24 s vs 2.5 s).
    with threadpool_limits(limits=1, user_api="blas"):
        return torch.from_numpy(_spread_directions(features, dim, rng)).float()


def welch_bound(features: int, dim: int) -> float:
    """The least max |cos| any `features` unit vectors in `dim` dimensions can have."""
    if features <= dim:
        return 0.0
    return math.sqrt((features - dim) / (dim * (features - 1)))


def max_abs_cos(directions_ND: torch.Tensor) -> float:
    gram = directions_ND.double() @ directions_ND.double().T
    gram.fill_diagonal_(0.0)
    return float(gram.abs().max()) if len(gram) > 1 else 0.0


def search_steps(features: int, dim: int) -> int:
    """Steps of the direction search (`_spread_directions`): 800, fewer for big worlds so that
    steps x features^2 x dim stays near 1e9, and never under 50 (preflight.py budgets the same)."""
    return int(np.clip(1e9 / (features * features * dim), 50, 800))


def _simplex_frame(n: int, rng: np.random.Generator) -> np.ndarray:
    """n = dim + 1 vertices of a regular simplex in a random orientation, each with a random sign.

    The rows of an orthonormal basis Q [n, n-1] of the space orthogonal to (1, ..., 1) satisfy
    Q Q^T = I - 1/n, so the normalised rows have cos -1/(n-1) = -1/dim with one another."""
    m = rng.standard_normal((n, n - 1))
    q, _ = np.linalg.qr(m - m.mean(axis=0))  # random basis of the complement of (1, ..., 1)
    rows = q / np.linalg.norm(q, axis=1, keepdims=True)
    return rows * rng.choice([-1.0, 1.0], size=(n, 1))


def _spread_directions(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Minimise max |cos| through its smooth stand-in, the p-norm of the off-diagonal cosines,
    with p rising from 4 to 300 (a soft max turning hard) and Adam steps on the sphere.

    Adam's per-coordinate steps settle where plain normalised descent keeps oscillating:
    40 features in 20 dims reach ~1.08x the Welch bound (plain descent ~1.10x), 100 in 30
    ~1.15x (~1.17x). Steps shrink for big worlds so the search stays bounded in time."""
    steps = search_steps(n, dim)
    V = rng.standard_normal((n, dim))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    best, best_V = np.inf, V
    mean, square = np.zeros_like(V), np.zeros_like(V)
    for t in range(steps):
        progress = t / max(steps - 1, 1)
        p = 4.0 * (300.0 / 4.0) ** progress
        lr = 0.05 * (0.0005 / 0.05) ** progress
        cos = V @ V.T
        np.fill_diagonal(cos, 0.0)
        size = np.abs(cos)
        worst = size.max()
        if worst < best:
            best, best_V = worst, V.copy()
        # d/dV of sum |cos|^p, scaled by the worst |cos| so large p never overflows
        weights = np.sign(cos) * np.exp((p - 1) * np.log(np.maximum(size / worst, 1e-300)))
        grad = weights @ V
        grad -= (grad * V).sum(axis=1, keepdims=True) * V  # along the sphere
        grad /= np.abs(grad).max() + 1e-300
        mean = 0.9 * mean + 0.1 * grad
        square = 0.999 * square + 0.001 * grad * grad
        step = (mean / (1 - 0.9 ** (t + 1))) / (np.sqrt(square / (1 - 0.999 ** (t + 1))) + 1e-8)
        V = V - lr * step
        V /= np.linalg.norm(V, axis=1, keepdims=True)
    return best_V
