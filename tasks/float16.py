"""float16 conversions exactly as numpy does them, several times faster (Numba).

``to_float16``: float32 -> float16, IEEE round to nearest, ties to even. numpy converts one element at a time
in scalar code (~2 ms per 352x1216 map on the build boxes), and the teacher output is converted once per
sample (upsampled to the canvas, or reduced to it). The kernel works on the bit patterns with integer
arithmetic, so it gives numpy's bits for every float32 input: normals, subnormal results, overflow to
infinity, signed zeros, infinities and NaNs (checked against numpy over all 2^32 patterns once;
tests/test_sim_fast_paths.py keeps a sampled check). ``float16_to_float32``: a lookup in a table of all
65536 values that numpy built.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _halfbits(u: np.ndarray, out: np.ndarray) -> None:
    for i in range(u.size):
        f = np.int64(u[i])
        sign = (f >> 16) & 0x8000
        a = f & 0x7FFFFFFF
        if a >= 0x47800000:  # |x| >= 65536, infinity or NaN
            if a > 0x7F800000:  # NaN: keep the top of the payload, and keep it a NaN
                h = 0x7C00 + ((a & 0x007FFFFF) >> 13)
                if h == 0x7C00:
                    h += 1
                out[i] = sign | h
            else:
                out[i] = sign | 0x7C00
        elif a >= 0x38800000:  # result is a normal half (or rounds up to infinity): add half an ulp, truncate
            out[i] = sign | ((a - 0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13)
        else:  # subnormal half or zero: the value in units of 2^-24, rounded to nearest even
            e = a >> 23
            if e < 102:  # below 2^-25: rounds to zero
                out[i] = sign
            else:
                m = (a & 0x007FFFFF) | 0x00800000
                s = 126 - e
                q = m >> s
                r = m & ((1 << s) - 1)
                half = 1 << (s - 1)
                if r > half or (r == half and (q & 1) == 1):
                    q += 1
                out[i] = sign | q


def to_float16(x: np.ndarray) -> np.ndarray:
    """``np.asarray(x, np.float32).astype(np.float16)``, bit for bit, several times faster."""
    if np.asarray(x).dtype == np.float16:
        return np.ascontiguousarray(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.uint16)
    _halfbits(x.reshape(-1).view(np.uint32), out.reshape(-1))
    return out.view(np.float16)


# Every float16 bit pattern's float32 value (exact: float32 holds every float16), built once by numpy; indexed
# by the uint16 view of a float16 array (also by tasks.depth_policy's float16 path).
F32_OF_F16_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _widen(bits: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    for i in range(bits.size):
        out[i] = table[bits[i]]


def float16_to_float32(x: np.ndarray) -> np.ndarray:
    """``x.astype(np.float32)`` for a float16 array, bit for bit (a table lookup), several times faster."""
    x = np.ascontiguousarray(x, dtype=np.float16)
    out = np.empty(x.shape, dtype=np.float32)
    _widen(x.reshape(-1).view(np.uint16), F32_OF_F16_BITS, out.reshape(-1))
    return out
