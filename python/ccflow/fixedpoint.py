"""Integer primitives shared by the quantizer, the golden model and the HLS check.

The hardware rounds and saturates in exactly these ways; anything that must
match it bit for bit calls these functions rather than re-deriving them.
"""

from __future__ import annotations

import numpy as np


def round_shift(x: np.ndarray, shift) -> np.ndarray:
    """Arithmetic right shift that rounds half up: floor((x + 2**(s-1)) / 2**s).

    The RTL adds the half before a constant shift, ``(x + ((1 <<< s) >>> 1)) >>> s``, and for the
    accumulator's per-row shift computes the same number as ``(x >>> s) + x[s - 1]`` (the last bit
    shifted out; 0 when s is 0), the shift and the add in different cycles. A shift of 0 is the identity.
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    return (x + ((np.int64(1) << shift) >> 1)) >> shift


def bounds(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


class SaturationCounter:
    """Counts every value clipped to its format; hardware keeps the same count."""

    def __init__(self) -> None:
        self.total = 0
        self.by_site: dict[str, int] = {}

    def saturate(self, x: np.ndarray, bits: int, site: str) -> np.ndarray:
        lo, hi = bounds(bits)
        clipped = np.clip(x, lo, hi)
        n = int(np.count_nonzero(clipped != x))
        if n:
            self.total += n
            self.by_site[site] = self.by_site.get(site, 0) + n
        return clipped

    def reset(self) -> None:
        self.total = 0
        self.by_site.clear()
