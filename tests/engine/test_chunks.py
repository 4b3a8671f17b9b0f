"""ChunkPool runs every chunk once over two threads and re-raises what a chunk raised; the encoder's
product and Adam's update in chunks equal the one-call versions."""

import threading
import time

import numpy as np
import pytest
import torch

from broken_latents.engine import chunks, sparse_latents
from broken_latents.engine.chunks import ChunkPool, HelperProbe
from broken_latents.engine.optim import ADAM_CHUNK, FlatAdam


@pytest.fixture
def pool():
    pool = ChunkPool()
    yield pool
    pool.close()


def test_every_chunk_runs_once_on_both_threads(pool):
    ran, threads = [], set()

    def chunk(i):
        time.sleep(0.002)  # releases the GIL, as the real chunks do
        ran.append(i)
        threads.add(threading.get_ident())

    for n in (0, 1, 40):
        ran.clear()
        pool.run(chunk, n)
        assert sorted(ran) == list(range(n))
    assert len(threads) == 2  # the helper took some


def test_a_chunk_error_reaches_the_caller(pool):
    def chunk(i):
        if i == 3:
            raise ValueError("chunk 3")

    with pytest.raises(ValueError, match="chunk 3"):
        pool.run(chunk, 8)
    pool.run(lambda i: None, 4)  # the pool still works


@pytest.mark.parametrize("tied", [False, True])
def test_encoder_in_chunks_equals_one_product(pool, tied):
    gen = torch.Generator().manual_seed(0)
    xc = torch.randn(2, 300, 16, generator=gen)  # 300 rows: a last chunk shorter than the others
    W = torch.randn(2, 24, 16, generator=gen).transpose(1, 2) if tied else torch.randn(2, 16, 24)
    b = None if tied else torch.randn(2, 24, generator=gen)
    torch.testing.assert_close(
        sparse_latents.encode(xc, W, b, pool), sparse_latents.encode(xc, W, b, None)
    )


def test_adam_in_chunks_equals_one_update(pool):
    rng = np.random.default_rng(0)
    start = rng.standard_normal(2 * ADAM_CHUNK + 123).astype(np.float32)
    flats = [start.copy(), start.copy()]
    adams = [FlatAdam(flats[0], lr=1e-2), FlatAdam(flats[1], lr=1e-2, pool=pool)]
    for _ in range(3):
        grad = rng.standard_normal(start.shape).astype(np.float32)
        for adam in adams:
            adam.step(grad)
    np.testing.assert_array_equal(flats[0], flats[1])
    assert not np.array_equal(flats[0], start)


@pytest.mark.parametrize("helper_costs", [-1.0, 1.0])
def test_the_probe_keeps_the_faster_way(monkeypatch, helper_costs):
    """Steps with the helper take 1 s more (or less) than without: after one probe the faster way
    holds until the next probe, which re-measures."""
    clock = [0.0]
    monkeypatch.setattr(chunks.time, "perf_counter", lambda: clock[0])
    probe = HelperProbe()
    used = []
    for _ in range(2 * HelperProbe.EVERY):
        use = probe.use_helper()
        used.append(use)
        clock[0] += 5.0 + (helper_costs if use else 0.0)
        probe.step_done()
    P = HelperProbe.PROBE
    assert used[:P] == [False] * P and used[P : 2 * P] == [True] * P  # the probe
    assert set(used[2 * P : HelperProbe.EVERY]) == {helper_costs < 0}
    assert used[HelperProbe.EVERY : HelperProbe.EVERY + 2 * P] == used[: 2 * P]  # probed again
