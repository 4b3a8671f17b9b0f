"""The training data: one independent stream of feature firings per seed, drawn ahead in a thread."""

from __future__ import annotations

from collections.abc import Iterator

import numba
import numpy as np
import torch

from .model import World
from .prefetch import Prefetcher
from .rng import normal_from_word, sfc64_next

TRAIN_STREAM = 0
"""Stream offset of the training samples."""
EVAL_STREAM = 7
"""Stream offset of the held-out evaluation samples (the metrics, histograms and figures)."""
PROBE_STREAM = 11
"""Stream offset of the refits' probe inputs (training/refit.py)."""

QUEUED = 2
"""Chunks drawn ahead by the sampling thread."""

CHUNK_BATCHES = 4
"""Batches drawn per seed at a time: fewer calls than one at a time, small enough to stay in cache
(16 at a time ran 3x slower per sample), and the same stream for any run length."""


class DataStream:
    """Seed r's samples come from its own generator (SFC64 seeded by (offset, r)), so seed r
    trains the same SAEs whichever other seeds run beside it. With `prefetch`, a thread draws
    the next chunk while the trainer works: the compiled sampler releases the GIL, so sampling
    runs on the second core.

    A sparse world (`World.sparse`) gets a `sparse.SparseStream` instead, whose `next()` gives a
    `SparseBatch` (inputs x and the firing lists), and stored activations (`activations.StoredActivations`)
    an `activations.ActivationStream`: every consumer opens its stream here."""

    def __new__(cls, world: World, *args, **kwargs):
        from .activations import ActivationStream, StoredActivations

        if cls is DataStream and isinstance(world, StoredActivations):
            return ActivationStream(world, *args, **kwargs)
        if cls is DataStream and world.sparse:
            from .sparse import SparseStream

            return SparseStream(world, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        world: World,
        seeds: list[int],
        batch: int,
        device: str | torch.device | None = "cpu",
        offset: int = TRAIN_STREAM,
        chunk: int = CHUNK_BATCHES,
        prefetch: bool = False,
    ):
        """device None: batches are numpy arrays (the CPU fast path); else torch tensors there."""
        self.world, self.batch, self.chunk, self.device = world, batch, chunk, device
        # The SFC64 state words of each seed's generator: `_draw_chunk` draws from them in compiled code.
        self.states_R4 = np.stack(
            [np.random.SFC64([offset, seed]).state["state"]["state"] for seed in seeds]
        )
        # What the compiled sampler needs of the world, as `World.sample` uses it.
        self._world_arrays = (
            world._thresholds_N1[:, 0],
            world._magnitudes_N1[:, 0],
            world._stds_N1[:, 0],
            world.noisy,
            *world.hierarchy_arrays(),
        )
        self.buffer_CRNB = None
        self.position = chunk
        # Scratch reused by every draw: fresh arrays this size come from mmap, and their page
        # faults cost more than drawing the samples.
        n, samples = world.n_features, chunk * batch
        self._words = np.empty((n * samples + 1) // 2, dtype=np.uint64)
        self._noise_words = np.empty(n * samples if world.noisy else 0, dtype=np.uint64)
        self._fires_NT = np.empty((n, samples), dtype=np.bool_)
        self._shape = (chunk, len(seeds), n, batch)
        self._recycled: list[np.ndarray] = []
        self.prefetcher: Prefetcher | None = None
        if prefetch:
            self._warm_up()  # here, before anyone times the stream, not in the thread's first draw
            # Chunks go round a ring of QUEUED + 2 buffers (numpy only: the trainer steps on views
            # of them, one step at a time). A buffer comes round again QUEUED + 2 draws later; the
            # thread gets there only by putting the QUEUED + 1 chunks in between into a queue that
            # holds QUEUED, so the trainer has taken the chunk right after this one: it is done with it.
            if device is None:
                self._recycled = [
                    np.empty(self._shape, dtype=np.float32) for _ in range(QUEUED + 2)
                ]
            self.prefetcher = Prefetcher(self._draw, QUEUED)

    def next(self):
        """Feature magnitudes f_RNB of the next batch of every seed (contiguous)."""
        if self.position == self.chunk:
            self.buffer_CRNB = self._draw() if self.prefetcher is None else self.prefetcher.take()
            self.position = 0
        self.position += 1
        return self.buffer_CRNB[self.position - 1]

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()

    def __enter__(self) -> "DataStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _draw(self):
        """The next chunk, [chunk, seeds, N, B]: batch-major so each step's slice is contiguous.

        Bit for bit what `World.sample` draws from each seed's SFC64 generator (tests check it),
        in one compiled call: a sampling thread that came back for the GIL between steps of a
        chunk waited up to a training step each time, and so fell behind the trainer."""
        if self._recycled:
            out = self._recycled.pop(0)
            self._recycled.append(out)
        else:
            out = np.empty(self._shape, dtype=np.float32)
        _draw_chunk(
            self.states_R4, *self._world_arrays, self._words, self._noise_words, self._fires_NT, out
        )
        return out if self.device is None else torch.from_numpy(out).to(self.device)

    def _warm_up(self) -> None:
        """Load (or compile) the sampler with the real argument types, on copies: the seeds'
        generators do not move."""
        n, seeds = len(self._world_arrays[0]), len(self.states_R4)
        _draw_chunk(
            self.states_R4.copy(),
            *self._world_arrays,
            np.empty(n, np.uint64),
            np.empty(2 * n, np.uint64),
            np.empty((n, 2), np.bool_),
            np.empty((1, seeds, n, 2), np.float32),
        )


@numba.njit(cache=True, nogil=True)
def _draw_chunk(
    states_R4,
    thresholds_N,
    magnitudes_N,
    stds_N,
    noisy,
    force_H,
    parents_H,
    offsets_H1,
    children,
    words,
    noise_words,
    fires_NT,
    out_CRNB,
):
    """Per seed r: firing masks from its generator, the hierarchy, magnitudes into out[:, r]
    (noisy: one more word per feature and sample, after the firing words, as `World.sample`)."""
    for r in range(states_R4.shape[0]):
        _fire(states_R4[r], thresholds_N, fires_NT, words)
        _apply_hierarchy(fires_NT, force_H, parents_H, offsets_H1, children)
        if noisy:
            for i in range(noise_words.shape[0]):
                noise_words[i] = sfc64_next(states_R4[r])
            _place_noisy(fires_NT, magnitudes_N, stds_N, noise_words, out_CRNB, r)
        else:
            _place(fires_NT, magnitudes_N, out_CRNB, r)


@numba.njit(cache=True, nogil=True)
def _apply_hierarchy(fires_NT, force_H, parents_H, offsets_H1, children):
    """`World.apply_hierarchy` on the arrays of `World.hierarchy_arrays` (relations top-down):
    conditional children fire only with their parent (top-down), then forcing children switch
    their parent on (bottom-up), so nested levels propagate."""
    T = fires_NT.shape[1]
    H = parents_H.shape[0]
    for h in range(H):
        if not force_H[h]:
            parent = parents_H[h]
            for child in children[offsets_H1[h] : offsets_H1[h + 1]]:
                for t in range(T):
                    fires_NT[child, t] = fires_NT[child, t] and fires_NT[parent, t]
    for h in range(H - 1, -1, -1):
        if force_H[h]:
            parent = parents_H[h]
            for child in children[offsets_H1[h] : offsets_H1[h + 1]]:
                for t in range(T):
                    fires_NT[parent, t] = fires_NT[parent, t] or fires_NT[child, t]


@numba.njit(cache=True, nogil=True)
def _fire(state, thresholds_N, fires_NT, words):
    """fires[n, t] = (32 random bits) < thresholds[n], the bits taken in order from 64-bit SFC64
    words, low half first, as `World.sample` takes them from numpy's `random_raw`. Advances `state`.
    `words`: scratch for ceil(N T / 2) words (numpy draws whole words)."""
    N, T = fires_NT.shape
    for i in range(words.shape[0]):
        words[i] = sfc64_next(state)
    bits = words.view(np.uint32)  # little-endian: the low half of each word comes first
    for n in range(N):
        threshold = thresholds_N[n]
        row = bits[n * T : (n + 1) * T]
        dest = fires_NT[n]
        for t in range(T):
            dest[t] = row[t] < threshold


@numba.njit(cache=True, nogil=True)
def _place(fires_NT, magnitudes_N, out_CRNB, r):
    """out[c, r, n, b] = magnitude n where feature n fires in sample c * B + b of the chunk."""
    C, _, N, B = out_CRNB.shape
    for c in range(C):
        for n in range(N):
            m = magnitudes_N[n]
            row = fires_NT[n, c * B : (c + 1) * B]
            dest = out_CRNB[c, r, n]
            for b in range(B):
                dest[b] = m if row[b] else np.float32(0.0)


@numba.njit(cache=True, nogil=True)
def _place_noisy(fires_NT, magnitudes_N, stds_N, noise_words, out_CRNB, r):
    """As `_place`, with each magnitude max(m + s z, 0), z the normal of the word for (feature n,
    sample t) of the chunk (`rng.normal_from_word`, what `model.normal_from_word` computes in numpy)."""
    C, _, N, B = out_CRNB.shape
    T = C * B
    for c in range(C):
        for n in range(N):
            m, s = np.float64(magnitudes_N[n]), np.float64(stds_N[n])
            for b in range(B):
                t = c * B + b
                if not fires_NT[n, t]:
                    out_CRNB[c, r, n, b] = np.float32(0.0)
                    continue
                z = normal_from_word(noise_words[n * T + t])
                out_CRNB[c, r, n, b] = np.float32(max(m + s * z, 0.0))


def held_out_batches(
    world: World, seeds: list[int], samples: int, batch: int, offset: int, device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`samples` held-out (f_RNB, x_RBD) pairs (the last batch shorter), drawn `batch` at a time from
    the world's own stream at `offset`: memory R x N x batch, not R x N x samples. A sparse world's
    batch (firing lists) is made dense here, one batch at a time."""
    drawn = 0
    stream = DataStream(world, seeds, batch, device, offset=offset, chunk=1)
    while drawn < samples:
        drawn_batch = stream.next()
        x_RBD = world.inputs(drawn_batch)
        f_RNB = drawn_batch.features_RNB() if hasattr(drawn_batch, "features_RNB") else drawn_batch
        take = min(batch, samples - drawn)
        yield f_RNB[..., :take], x_RBD[:, :take]
        drawn += take
