"""Toy worlds: known feature directions, Bernoulli firing, fixed magnitudes, parent/child co-occurrence.

Samples are drawn in *feature space*: a batch is `f_RNB`, the magnitude of every feature in
every sample (0 when it does not fire), for R independent seeds at once. The batch is the
last, contiguous axis because the fast path's products ([K, N] @ [N, B]) run several times
faster on the CPU that way round. The input is `x = f^T @ F` with `F_ND` the unit feature
directions; training works on `f` directly, which keeps the firing mask available for free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import WorldConfig, resolve_spec


@dataclass
class World:
    config: WorldConfig
    directions_ND: torch.Tensor
    """Unit-norm feature directions, one row per feature."""
    rates_N: torch.Tensor
    """Each feature's own firing probability (a conditional child: its rate given the parent)."""
    magnitudes_N: torch.Tensor

    def __post_init__(self) -> None:
        # Sampling runs in numpy (see `sample`); keep its constants ready.
        scaled = np.floor(self.rates_N.cpu().double().numpy() * 2.0**32)
        self._thresholds_N1 = np.minimum(scaled, 2.0**32 - 1).astype(np.uint32)[:, None]
        self._magnitudes_N1 = self.magnitudes_N.cpu().float().numpy()[:, None]

    @classmethod
    def build(cls, config: WorldConfig) -> "World":
        rates = torch.tensor(resolve_spec(config.firing, config.features, "world.firing"))
        mags = torch.tensor(resolve_spec(config.magnitude, config.features, "world.magnitude"))
        directions = feature_directions(config.features, config.dim, config.seed)
        return cls(config, directions, rates, mags)

    @property
    def n_features(self) -> int:
        return self.config.features

    def to(self, device: str | torch.device) -> "World":
        return World(self.config, self.directions_ND.to(device), self.rates_N.to(device), self.magnitudes_N.to(device))

    # -- sampling -------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Feature magnitudes `f_NB` (float32) of `batch` samples from one seed's generator.

        Fires where 32 random bits fall below rate * 2^32: exact rates to 2^-32, and raw bits
        are several times cheaper than uniform floats (sampling is the hot loop's other half)."""
        n = self.n_features
        words = rng.bit_generator.random_raw((n * batch + 1) // 2)
        bits = words.view(np.uint32)[: n * batch].reshape(n, batch)
        fires = self.apply_hierarchy(bits < self._thresholds_N1)
        return fires * self._magnitudes_N1

    def inputs(self, f_RNB: torch.Tensor) -> torch.Tensor:
        """x_RBD = f^T F."""
        return f_RNB.transpose(-1, -2) @ self.directions_ND

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

    # -- known answers --------------------------------------------------------------------

    def marginal_rates(self) -> torch.Tensor:
        """Exact probability that each feature fires, hierarchy included.

        Exact for trees of one mode; for a force-parent whose children are themselves
        forced by grandchildren, children are treated as independent, which they are."""
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

    def expected_mse(self) -> torch.Tensor:
        """Loss a feature costs when left out: P(fires) * magnitude^2 (the post's ranking)."""
        return self.marginal_rates() * self.magnitudes_N.cpu() ** 2

    def expected_mse_ranking(self) -> list[int]:
        return torch.argsort(self.expected_mse(), descending=True, stable=True).tolist()

    def variance(self) -> torch.Tensor:
        """What leaving a feature out costs an SAE whose decoder bias takes the feature's mean: p(1-p) m^2."""
        p = self.marginal_rates()
        return p * (1 - p) * self.magnitudes_N.cpu() ** 2

    def variance_ranking(self) -> list[int]:
        return torch.argsort(self.variance(), descending=True, stable=True).tolist()


def feature_directions(features: int, dim: int, seed: int) -> torch.Tensor:
    """Orthonormal rows when dim >= features, otherwise rows spread as evenly as possible.

    The spread minimises a soft maximum of |cos| by gradient descent; 20 features in 19 dims
    reach max |cos| ~ 0.053 (the Welch bound is 1/19 = 0.0526), the post's "+-0.05"."""
    gen = torch.Generator().manual_seed(seed)
    if dim >= features:
        q, _ = torch.linalg.qr(torch.randn(dim, features, generator=gen, dtype=torch.float64))
        return q.T.contiguous().float()
    v = torch.randn(features, dim, generator=gen, dtype=torch.float64)
    v = torch.nn.functional.normalize(v, dim=1).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=0.01)
    off_diagonal = ~torch.eye(features, dtype=torch.bool)
    for step in range(600):
        u = torch.nn.functional.normalize(v, dim=1)
        cos = (u @ u.T)[off_diagonal]
        sharpness = 20.0 + step / 2  # soft max -> hard max as the spread settles
        loss = torch.logsumexp(sharpness * cos.abs(), dim=0) / sharpness
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.nn.functional.normalize(v.detach(), dim=1).float()
