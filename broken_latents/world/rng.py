"""The compiled samplers' random numbers: numpy's SFC64 generator stepped in numba, uniforms and
normals from its 64-bit words (world/stream.py, world/sparse.py)."""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def sfc64_next(s):
    """One step of Chris Doty-Humphrey's SFC64 on state s = (a, b, c, counter), as numpy's SFC64."""
    tmp = s[0] + s[1] + s[3]
    s[3] += np.uint64(1)
    s[0] = s[1] ^ (s[1] >> np.uint64(11))
    s[1] = s[2] + (s[2] << np.uint64(3))
    s[2] = ((s[2] << np.uint64(24)) | (s[2] >> np.uint64(40))) + tmp
    return tmp


@numba.njit(cache=True, nogil=True, inline="always")
def uniform(s):
    """Uniform in (0, 1] from the top 53 bits of one word (never 0: its log is finite)."""
    return (np.float64(sfc64_next(s) >> np.uint64(11)) + 1.0) * 2.0**-53


@numba.njit(cache=True, nogil=True, inline="always")
def normal_from_word(word):
    """One standard normal from a word, by Box-Muller on its two 32-bit halves (the cosine branch
    only), in float64: `model.normal_from_word` computes the same in numpy."""
    u1 = (np.float64(word >> np.uint64(32)) + 1.0) * 2.0**-32  # (0, 1]: log is finite
    u2 = np.float64(word & np.uint64(0xFFFFFFFF)) * 2.0**-32
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@numba.njit(cache=True, nogil=True, inline="always")
def normal(s):
    """One standard normal per word of the generator."""
    return normal_from_word(sfc64_next(s))
