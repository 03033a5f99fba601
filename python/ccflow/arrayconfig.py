"""The physical array and its number formats: the one object every stage reads.

Training reads ``alpha`` (the MX cell's mux width) and ``rows`` (the array
height, used as the row block of block column combining). The quantizer reads
the number formats. The renderer turns the whole object into the Verilog
modules' parameters and the HLS header; the golden model and the cocotb test
benches load the very same object back from ``array_config.json``. Nothing
about the hardware is written down anywhere else.

Fixed-point formats (all integers are two's complement; ``Qm.f`` = f fraction bits):

==============  =====================  ==========================================
quantity        format (default)       notes
==============  =====================  ==========================================
weight          int8, per section      value = q * 2**-e; e chosen per section
                exponent e             (weight_section: one per matrix row by
                                       default), see quantize.py
activation      int16, Q3.12           embedding output x and hidden state h
accumulator     int32, saturating      scale 2**-(e + act_frac); starts at bias
gate input z    int16, Q3.12           round-shift of the accumulator by
                                       e + act_frac - act_frac
LUT             2**lut_bits entries    index = clamp(round_shift(z, act_frac -
                                       lut_frac)); value in Q3.12
cell state c    int24, Q11.12          c' = sat(round_shift(f*c + i*g, 12))
logit           int16, Q7.8            decoder rows, round-shift by e + 12 - 8
==============  =====================  ==========================================

Every saturation (weights, biases and embedding at quantization time; every
accumulator add, requantization, cell update and hidden update at run time)
is counted, never silent.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


# Which weights share one power-of-two exponent (quantize.row_exponents): the whole model, one
# matrix, one gate of a matrix, one gate of one array row block, or one matrix row. The array
# shifts every row's sum by its own amount, so the choice costs the hardware nothing.
WEIGHT_SECTIONS = ("model", "matrix", "gate", "gate_block", "row")


@dataclass(frozen=True)
class NumberFormats:
    weight_bits: int = 8
    act_bits: int = 16
    act_frac: int = 12
    acc_bits: int = 32
    cell_bits: int = 24
    lut_frac: int = 7
    logit_frac: int = 8
    max_shift: int = 31
    # Which weights share one exponent (one of WEIGHT_SECTIONS). "row" by the study in docs/quantization.md:
    # as good as any at 8 bits, 0.023 BPC better than per gate and row block at 4 bits, free in hardware.
    weight_section: str = "row"

    def __post_init__(self) -> None:
        _check(self.weight_section in WEIGHT_SECTIONS,
               f"weight_section={self.weight_section!r} must be one of {', '.join(WEIGHT_SECTIONS)}")
        _check(2 <= self.weight_bits <= 16, f"weight_bits={self.weight_bits} must be in 2..16")
        _check(4 <= self.act_bits <= 24, f"act_bits={self.act_bits} must be in 4..24")
        _check(0 <= self.act_frac < self.act_bits, f"act_frac={self.act_frac} must be in 0..act_bits-1")
        _check(self.acc_bits >= self.weight_bits + self.act_bits and self.acc_bits <= 48,
               f"acc_bits={self.acc_bits} must be in weight_bits+act_bits..48")
        _check(self.act_bits <= self.cell_bits <= 32, f"cell_bits={self.cell_bits} must be in act_bits..32")
        _check(0 <= self.lut_frac <= self.act_frac, f"lut_frac={self.lut_frac} must be in 0..act_frac")
        _check(0 <= self.logit_frac < self.act_bits, f"logit_frac={self.logit_frac} must be in 0..act_bits-1")
        _check(0 <= self.max_shift <= 63, f"max_shift={self.max_shift} must be in 0..63")

    @property
    def lut_shift(self) -> int:
        """Right shift from a Q.act_frac value to a LUT index."""
        return self.act_frac - self.lut_frac

    @property
    def lut_bits(self) -> int:
        """Index width: covers the whole act_bits input range after the shift."""
        return self.act_bits - self.lut_shift

    @property
    def lut_size(self) -> int:
        return 1 << self.lut_bits


@dataclass(frozen=True)
class ArrayConfig:
    """A physical array of ``rows`` x ``cols`` MX cells, each muxing ``alpha`` inputs."""

    rows: int = 16
    cols: int = 8
    alpha: int = 8
    formats: NumberFormats = field(default_factory=NumberFormats)
    # Prepended to the name of every generated Verilog module and its file (ccflow_top -> <prefix>ccflow_top), so
    # two generated designs can share one project; "" keeps the plain names.
    module_prefix: str = ""

    def __post_init__(self) -> None:
        _check(re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)?", self.module_prefix) is not None,
               f"array.module_prefix={self.module_prefix!r} must be empty or start a Verilog identifier "
               "(letters, digits and _, not starting with a digit), e.g. lm0_")
        _check(self.rows >= 4 and self.rows % 4 == 0,
               f"array.rows={self.rows} must be a positive multiple of 4 (a row block holds whole LSTM units)")
        _check(self.cols >= 1, f"array.cols={self.cols} must be >= 1")
        _check(self.alpha >= 1, f"array.alpha={self.alpha} must be >= 1")

    @property
    def sel_bits(self) -> int:
        """Width of a cell's select: log2(alpha), at least 1 so ports never vanish."""
        return max(1, math.ceil(math.log2(self.alpha)))

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    def module(self, name: str) -> str:
        """The name generated module ``name`` (e.g. ``ccflow_top``) has on this array: ``module_prefix`` + name."""
        return self.module_prefix + name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ArrayConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        _check(not unknown, f"unknown array setting(s) {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "formats" in d and isinstance(d["formats"], dict):
            fknown = {f.name for f in fields(NumberFormats)}
            bad = set(d["formats"]) - fknown
            _check(not bad, f"unknown number format(s) {sorted(bad)}; known: {sorted(fknown)}")
            d["formats"] = NumberFormats(**d["formats"])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ArrayConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
