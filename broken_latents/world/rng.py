"""The compiled samplers' random numbers: numpy's SFC64 generator stepped in numba, uniforms and
normals from its 64-bit words (world/stream.py, world/sparse.py).

The generator's state is an array of 4 words (`sfc64_next`) or, in hot loops, a tuple of them that each
draw takes and returns (`sfc64_step`, `uniform`, `normal`): an array handed to a helper costs two atomic
reference count updates per call, which took a third of the sparse sampler's time."""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def sfc64_step(st):
    """One step of Chris Doty-Humphrey's SFC64 on state (a, b, c, counter), as numpy's SFC64:
    (word, next state)."""
    a, b, c, counter = st
    word = a + b + counter
    rotated = (c << np.uint64(24)) | (c >> np.uint64(40))
    return word, (
        b ^ (b >> np.uint64(11)),
        c + (c << np.uint64(3)),
        rotated + word,
        counter + np.uint64(1),
    )


@numba.njit(cache=True, nogil=True, inline="always")
def sfc64_next(s):
    """`sfc64_step` on a state array s (numpy's `bit_generator.state["state"]["state"]`), in place."""
    word, (s[0], s[1], s[2], s[3]) = sfc64_step((s[0], s[1], s[2], s[3]))
    return word


@numba.njit(cache=True, nogil=True, inline="always")
def uniform(st):
    """Uniform in (0, 1] from the top 53 bits of one word (never 0: its log is finite): (u, next state)."""
    word, st = sfc64_step(st)
    return (np.float64(word >> np.uint64(11)) + 1.0) * 2.0**-53, st


@numba.njit(cache=True, nogil=True, inline="always")
def normal_from_word(word):
    """One standard normal from a word, by Box-Muller on its two 32-bit halves (the cosine branch
    only), in float64: `model.normal_from_word` computes the same in numpy."""
    u1 = (np.float64(word >> np.uint64(32)) + 1.0) * 2.0**-32  # (0, 1]: log is finite
    u2 = np.float64(word & np.uint64(0xFFFFFFFF)) * 2.0**-32
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


ZIGGURAT_R, ZIGGURAT_V = 3.6541528853610088, 0.00492867323399
"""Marsaglia and Tsang's 256-layer ziggurat for the normal: where the base layer's tail starts, and each
layer's area."""


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray]:
    """Layer i covers [0, x[i]] x [f(x[i]), f(x[i + 1])], f(x) = exp(-x^2 / 2), all of area ZIGGURAT_V; layer
    0 is the rectangle under f(r) with the tail past r, x[0] = V / f(r) its width as one rectangle."""
    x = np.empty(257)
    x[0], x[1], x[256] = ZIGGURAT_V / math.exp(-0.5 * ZIGGURAT_R**2), ZIGGURAT_R, 0.0
    for i in range(1, 255):
        x[i + 1] = math.sqrt(-2.0 * math.log(ZIGGURAT_V / x[i] + math.exp(-0.5 * x[i] ** 2)))
    return x, np.exp(-0.5 * x * x)


ZIGGURAT_X, ZIGGURAT_F = _ziggurat_tables()


@numba.njit(cache=True, nogil=True, inline="always")
def normal(st):
    """One standard normal by the ziggurat, (z, next state): one word (layer, sign, position) and no log
    or exp in about 99 draws in 100; the rest test the wedge or draw the tail past r exactly."""
    while True:
        w, st = sfc64_step(st)
        layer = np.int64(w & np.uint64(0xFF))
        negative = (w >> np.uint64(8)) & np.uint64(1)
        x = np.float64(w >> np.uint64(11)) * 2.0**-53 * ZIGGURAT_X[layer]
        if x >= ZIGGURAT_X[layer + 1]:
            if layer == 0:  # the tail past r (Marsaglia, 1964)
                while True:
                    u, st = uniform(st)
                    tail = -math.log(u) / ZIGGURAT_R
                    u, st = uniform(st)
                    if -2.0 * math.log(u) > tail * tail:
                        break
                x = ZIGGURAT_R + tail
            else:
                low, high = ZIGGURAT_F[layer], ZIGGURAT_F[layer + 1]
                u, st = uniform(st)
                if low + u * (high - low) >= math.exp(-0.5 * x * x):
                    continue
        return (-x if negative else x), st
