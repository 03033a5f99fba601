"""Float model + packings -> :class:`~ccflow.design.Design` (fixed point, tiled for the array).

Why per-section weight formats: one exponent per tensor lets the largest gate
(often the forget gate's bias-heavy rows) set the scale for all of them, and
small gates lose their low bits. Here every *section* gets its own power-of-two
exponent ``e``: weights are ``round(w * 2**e)`` in int8, a row's accumulator
has scale ``2**-(e + act_frac)``, and the row's right shift
``e + act_frac - out_frac`` brings it back to a common format. The array
shifts every row by its own amount, so any section that is a set of whole rows
costs the hardware nothing. ``formats.weight_section`` says which rows share
one exponent (:func:`row_exponents`): the whole model, a matrix, a gate of a
matrix, a gate of one row block (the array height), or a single row; the study
in docs/quantization.md measured them (per row is the default).

``e`` is the largest exponent at which the section's weights fit the weight
format and its biases fit a quarter of the accumulator (headroom for the sum),
clamped so the shift stays in ``0..max_shift``.

The packing of every matrix, decoder included, and so the groups each row
block executes, come from the packing stage (:func:`ccflow.pack.pack_model`):
training's packing where there is one, the lossless conflict-free one
otherwise. The quantizer lays out exactly those groups, so the design's packed
cells are the packing stage's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .arrayconfig import ArrayConfig
from .combine import Packing
from .design import Design, MatrixInfo, act_layout, column_addresses
from .fixedpoint import SaturationCounter
from .pack import FloatLSTM, FloatModel, MatrixPacking, PackError, pack_model

__all__ = ["FloatLSTM", "FloatModel", "QuantizeError", "quantize", "activation_luts", "section_exponent",
           "row_exponents"]


class QuantizeError(PackError):
    """A model or packing the array cannot hold; the message says which and why."""


def quantize(model: FloatModel, array: ArrayConfig,
             packings: dict[int, Packing] | None = None) -> Design:
    """Lay the model out on the array in fixed point; see the module docstring."""
    fmt = array.formats
    sat = SaturationCounter()
    vocab, emsize = model.embedding.shape
    hidden = [layer.hidden for layer in model.layers]

    # Activation memory [emb | h_0 | ... | h_{L-1}], regions padded to whole bank rows (design.act_layout).
    layout = act_layout(emsize, hidden, array.alpha, array.rows // 4)
    base, cell_base = layout["act_base"], layout["cell_base"]

    for l, layer in enumerate(model.layers):
        if layer.w_ih.shape[0] != 4 * layer.hidden:
            raise QuantizeError(f"layer {l}: weight_ih has {layer.w_ih.shape[0]} rows, expected 4*{layer.hidden}")
    try:
        packed = pack_model(model, array, packings)
    except PackError as e:
        raise QuantizeError(str(e)) from None
    biases = [layer.bias.reshape(4, layer.hidden).T.reshape(-1) for layer in model.layers]  # interleaved like rows
    biases.append(model.decoder_bias)
    out_fracs = [fmt.act_frac] * len(model.layers) + [fmt.logit_frac]
    gates = [4] * len(model.layers) + [1]
    exponents = row_exponents([mp.matrix for mp in packed.matrices], biases, out_fracs, gates, array)
    builder = _TileBuilder(array)
    matrices = []
    for l, (layer, mp) in enumerate(zip(model.layers, packed.matrices)):
        matrices.append(builder.add(mp, biases[l], exponents[l], fmt.act_frac, sat, in_base=base[l],
                                    hidden=layer.hidden, out_base=base[l + 1], cell_base=cell_base[l]))
    matrices.append(builder.add(packed.matrices[-1], biases[-1], exponents[-1], fmt.logit_frac, sat,
                                in_base=base[len(hidden)], hidden=0, out_base=-1, cell_base=-1))

    act_lo, act_hi = -(1 << (fmt.act_bits - 1)), (1 << (fmt.act_bits - 1)) - 1
    emb = np.rint(model.embedding * 2.0 ** fmt.act_frac).astype(np.int64)
    emb = sat.saturate(emb, fmt.act_bits, "embedding")
    assert emb.min() >= act_lo and emb.max() <= act_hi
    lut_sigmoid, lut_tanh = activation_luts(array)
    return Design(
        array=array, vocab_size=vocab, emsize=emsize, act_size=layout["act_size"], cell_size=layout["cell_size"],
        matrices=tuple(matrices), lut_sigmoid=lut_sigmoid, lut_tanh=lut_tanh, embedding=emb,
        quant_saturations=sat.total, **builder.arrays())


def activation_luts(array: ArrayConfig) -> tuple[np.ndarray, np.ndarray]:
    """sigmoid and tanh tables; entry at address (index mod size) holds f(index * 2**-lut_frac)."""
    fmt = array.formats
    half = fmt.lut_size // 2
    index = np.arange(fmt.lut_size)
    index = np.where(index >= half, index - fmt.lut_size, index)  # two's complement address
    x = index * 2.0 ** -fmt.lut_frac
    scale = 2.0 ** fmt.act_frac
    sig = np.rint(scale / (1.0 + np.exp(-x))).astype(np.int64)
    tanh = np.rint(scale * np.tanh(x)).astype(np.int64)
    return sig, tanh


def section_exponent(max_w: float, max_b: float, array: ArrayConfig, out_frac: int) -> int:
    """Largest e with max|w| * 2**e within int weight range and max|b| within acc/4."""
    fmt = array.formats
    e_min = out_frac - fmt.act_frac  # shift = e + act_frac - out_frac >= 0
    e_max = fmt.max_shift - fmt.act_frac + out_frac
    e = e_max
    if max_w > 0:
        e = min(e, math.floor(math.log2(((1 << (fmt.weight_bits - 1)) - 1) / max_w)))
    if max_b > 0:
        e = min(e, math.floor(math.log2((1 << (fmt.acc_bits - 3)) / max_b)) - fmt.act_frac)
    return max(e, e_min)


def row_exponents(matrices: list[np.ndarray], biases: list[np.ndarray], out_fracs: list[int], gates: list[int],
                  array: ArrayConfig) -> list[np.ndarray]:
    """Each row's weight exponent, shared by the rows of its section (``formats.weight_section``).

    ``gates``: per matrix, how many gates its rows interleave. LSTM matrices interleave theirs unit
    by unit (i, f, g, o of unit 0, then of unit 1, ...: 4, a row's gate is its index mod 4); the
    decoder and a CNN's layers have none (1: a gate section is the whole matrix).
    """
    section = array.formats.weight_section
    if section == "model":  # every row of every matrix: the largest weight and bias anywhere set e
        max_w = max(float(np.abs(m).max(initial=0.0)) for m in matrices)
        max_b = max(float(np.abs(b).max(initial=0.0)) for b in biases)
        return [np.full(m.shape[0], section_exponent(max_w, max_b, array, f), dtype=np.int64)
                for m, f in zip(matrices, out_fracs)]
    out = []
    for matrix, bias, out_frac, n_gates in zip(matrices, biases, out_fracs, gates, strict=True):
        rows = np.arange(matrix.shape[0])
        gate = rows % n_gates
        key = {"matrix": np.zeros_like(rows), "gate": gate, "gate_block": rows // array.rows * n_gates + gate,
               "row": rows}[section]
        e = np.zeros(len(rows), dtype=np.int64)
        for k in np.unique(key):
            sel = key == k
            e[sel] = section_exponent(float(np.abs(matrix[sel]).max(initial=0.0)),
                                      float(np.abs(bias[sel]).max(initial=0.0)), array, out_frac)
        out.append(e)
    return out


class _TileBuilder:
    """Accumulates tiles and row blocks of all matrices in execution order."""

    def __init__(self, array: ArrayConfig) -> None:
        self.array = array
        self.tiles: list[_Tile] = []
        self.bias: list[np.ndarray] = []
        self.shift: list[np.ndarray] = []

    def add(self, mp: MatrixPacking, bias, exponent, out_frac, sat, *,
            in_base, hidden, out_base, cell_base) -> MatrixInfo:
        arr, fmt = self.array, self.array.formats
        matrix, name = mp.matrix, mp.name
        R, C = matrix.shape
        info = dict(name=name, kind=mp.kind, rows=R, in_base=in_base, in_size=C, in_x=mp.in_x, hidden=hidden,
                    out_base=out_base, cell_base=cell_base)
        addresses = column_addresses(in_base, mp.in_x, C, out_base)
        tile_start, block_start = len(self.tiles), len(self.bias)
        blocks = []  # per row block: its array columns
        for r0, groups in zip(range(0, R, arr.rows), mp.blocks):
            r1 = min(R, r0 + arr.rows)
            rows = slice(r0, r1)
            e_row = np.zeros(arr.rows, dtype=np.int64)  # rows past the matrix keep e = 0 (no weights)
            e_row[: r1 - r0] = exponent[rows]
            wq = np.rint(matrix[rows] * 2.0 ** e_row[: r1 - r0, None]).astype(np.int64)
            wq = sat.saturate(wq, fmt.weight_bits, f"{name} weights")
            bq = np.zeros(arr.rows, dtype=np.int64)
            bq[: r1 - r0] = np.rint(bias[rows] * 2.0 ** (e_row[: r1 - r0] + fmt.act_frac))
            bq = sat.saturate(bq, fmt.acc_bits, f"{name} bias")
            self.bias.append(bq)
            self.shift.append(e_row + fmt.act_frac - out_frac)
            # A block without groups still needs one (empty) column: its bias makes its result.
            blocks.append([self._column(wq, g, addresses) for g in groups] or [self._column(wq, (), addresses)])
        for tile in _deal(blocks, arr.cols, block_start):
            self.tiles.append(tile.padded(self._column(None, (), addresses), arr.cols))
        return MatrixInfo(
            **info, tile_start=tile_start, n_tiles=len(self.tiles) - tile_start,
            block_start=block_start, n_blocks=len(self.bias) - block_start, dense_cells=mp.dense_cells,
            packed_cells=mp.packed_cells, nnz=mp.nnz)

    def _column(self, wq, group, addresses):
        """One array column: per row the weight and select of the group's one nonzero, and its inputs.

        Input slot k holds the member in act bank k (address mod alpha; the bank rule makes them
        distinct). An unused slot k reads address k (bank k of the embedding region, always written).
        """
        arr = self.array
        weight = np.zeros(arr.rows, dtype=np.int64)
        select = np.zeros(arr.rows, dtype=np.int64)
        addr = np.arange(arr.alpha, dtype=np.int64)
        if group:
            cols = np.asarray(group)
            slots = addresses[cols] % arr.alpha
            assert len(set(slots.tolist())) == len(cols), "bank rule broken"
            addr[slots] = addresses[cols]
            sub = wq[:, cols]
            s = np.argmax(sub != 0, axis=1)  # the one nonzero of each row (0 when none)
            n = wq.shape[0]
            weight[:n] = sub[np.arange(n), s]
            select[:n] = slots[s]
        return weight, select, addr

    def arrays(self) -> dict[str, np.ndarray]:
        t = self.tiles
        return dict(tile_weight=np.stack([np.stack([c[0] for c in x.columns], 1) for x in t]),
                    tile_sel=np.stack([np.stack([c[1] for c in x.columns], 1) for x in t]),
                    tile_addr=np.stack([np.stack([c[2] for c in x.columns]) for x in t]),
                    tile_block=np.array([x.block for x in t], dtype=np.int64),
                    tile_first=np.array([x.first for x in t]), tile_last=np.array([x.last for x in t]),
                    tile_split=np.array([x.split for x in t], dtype=np.int64),
                    block_bias=np.stack(self.bias), block_shift=np.stack(self.shift))


@dataclass
class _Tile:
    block: int  # block A
    first: bool
    last: bool = False
    split: int = 0  # 0 while open: set to the column count when the tile is closed without a block B
    columns: list = None

    def padded(self, empty, cols: int) -> "_Tile":
        if not self.split:
            self.split = cols
        self.columns += [empty] * (cols - len(self.columns))
        return self


def _deal(blocks: list[list], cols: int, block_start: int) -> list[_Tile]:
    """Deal the blocks' columns into tiles; a block may start mid-tile unless it would also end there."""
    tiles: list[_Tile] = []
    open_tile = None  # a tile whose block A ended before its last column
    for b, columns in enumerate(blocks, start=block_start):
        i = 0
        if open_tile is not None:
            free = cols - len(open_tile.columns)
            if len(columns) > free:  # b starts here as block B and goes on in the next tile
                open_tile.split = len(open_tile.columns)
                open_tile.columns += columns[:free]
                i = free
            open_tile = None
        while i < len(columns):
            take = columns[i:i + cols]
            tile = _Tile(block=b, first=i == 0, columns=list(take))
            i += len(take)
            tile.last = i == len(columns)
            tiles.append(tile)
            if tile.last and len(take) < cols:
                open_tile = tile
    return tiles
