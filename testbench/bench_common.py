"""Shared helpers of the cocotb benches: the design under test, the run's settings, bit fields.

The benches learn everything from ``array_config.json`` + ``design.npz`` in
``$CCFLOW_RTL_DIR`` (never from the .mem files) and their per-run settings from
the JSON file ``$CCFLOW_BENCH_ARGS`` written by ``ccflow.simulate``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ccflow.arrayconfig import ArrayConfig
from ccflow.design import Design


def rtl_dir() -> Path:
    d = os.environ.get("CCFLOW_RTL_DIR")
    if not d:
        raise RuntimeError("CCFLOW_RTL_DIR is not set; run the benches through ccflow.simulate")
    return Path(d)


def load_design() -> Design:
    return Design.load(rtl_dir())


def load_array() -> ArrayConfig:
    return ArrayConfig.load(rtl_dir() / "array_config.json")


def bench_args() -> dict:
    p = os.environ.get("CCFLOW_BENCH_ARGS")
    return json.loads(Path(p).read_text()) if p else {}


def write_results(args: dict, results: dict) -> None:
    path = args.get("results")
    if path:
        Path(path).write_text(json.dumps(results, indent=2) + "\n")


def pack(values, bits: int) -> int:
    """Concatenate integers (two's complement, ``bits`` each) LSB first into one bus value."""
    word = 0
    mask = (1 << bits) - 1
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * bits)
    return word


def unpack(word: int, count: int, bits: int, signed: bool = True) -> np.ndarray:
    """Split a bus value into ``count`` fields of ``bits`` (LSB first)."""
    mask = (1 << bits) - 1
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        v = (word >> (i * bits)) & mask
        out[i] = v - (1 << bits) if signed and v >> (bits - 1) else v
    return out


def signed_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def random_signed(rng: np.random.Generator, bits: int, n: int, extreme_share: float = 0.2) -> np.ndarray:
    """Uniform signed values with a share of the extremes (min, max, -1, 0, 1, min+1, max-1)."""
    lo, hi = signed_range(bits)
    v = rng.integers(lo, hi + 1, n)
    extremes = np.array([lo, hi, -1, 0, 1, lo + 1, hi - 1])
    pick = rng.random(n) < extreme_share
    v[pick] = rng.choice(extremes, int(pick.sum()))
    return v
