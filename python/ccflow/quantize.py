"""Float model + packings -> :class:`~ccflow.design.Design` (fixed point, tiled for the array).

Why per-section weight formats: one exponent per tensor lets the largest gate
(often the forget gate's bias-heavy rows) set the scale for all of them, and
small gates lose their low bits. Here every *section* -- one gate of one row
block of the array -- gets its own power-of-two exponent ``e``: weights are
``round(w * 2**e)`` in int8, the block's accumulator has scale
``2**-(e + act_frac)``, and the per-row right shift ``e + act_frac - out_frac``
brings it back to a common format. A shift is one barrel shifter per row, so
sections cost the hardware almost nothing.

``e`` is the largest exponent at which the section's weights fit the weight
format and its biases fit a quarter of the accumulator (headroom for the sum),
clamped so the shift stays in ``0..max_shift``.

The packing comes from training (the last combine step) when there is one:
its groups were retrained with their combine-pruned masks, so it is lossless
now. Without one, conflict-free combining (gamma 0) packs the final weights,
which is lossless by construction. The decoder is packed the same way. Every
packing obeys the hardware's bank rule (no two columns of a group in one act
bank, ``design.column_banks``): training and the fallback combine with it, and a
packing made without it (an older checkpoint) is split losslessly (``split_banks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .arrayconfig import ArrayConfig
from .combine import Packing, check_packing, combine_columns, lstm_matrix, lstm_unmatrix, split_banks
from .design import Design, MatrixInfo, act_layout, column_addresses, column_banks
from .fixedpoint import SaturationCounter


class QuantizeError(ValueError):
    """A model or packing the array cannot hold; the message says which and why."""


@dataclass(frozen=True)
class FloatLSTM:
    w_ih: np.ndarray  # [4H, I], PyTorch gate order i, f, g, o, masks already applied
    w_hh: np.ndarray  # [4H, H]
    bias: np.ndarray  # [4H] = b_ih + b_hh

    @property
    def hidden(self) -> int:
        return self.w_hh.shape[1]


@dataclass(frozen=True)
class FloatModel:
    """What the quantizer needs of a trained model, as float64 numpy arrays."""

    layers: tuple[FloatLSTM, ...]
    embedding: np.ndarray  # [V, E]; the decoder weight is tied to it
    decoder_bias: np.ndarray  # [V]

    @classmethod
    def from_torch(cls, model) -> "FloatModel":
        """From a ``ccflow.model.LSTMLanguageModel`` (masked weights, no dropout)."""

        def np64(t):
            return t.detach().cpu().double().numpy()

        layers = []
        for layer in model.layers:
            w_ih, w_hh = layer.effective_weights()
            layers.append(FloatLSTM(np64(w_ih), np64(w_hh), np64(layer.bias_ih) + np64(layer.bias_hh)))
        return cls(tuple(layers), np64(model.encoder.weight), np64(model.decoder.bias))

    def combined(self, alpha: int, gamma: float, row_block: int | None) -> tuple["FloatModel", dict[int, Packing]]:
        """Column-combine every LSTM layer and apply the combine-pruning masks (no retraining)."""
        packings, layers = {}, []
        for k, layer in enumerate(self.layers):
            banks = column_banks(layer.w_ih.shape[1], layer.w_ih.shape[1] + layer.hidden, alpha)
            p = combine_columns(lstm_matrix(layer.w_ih, layer.w_hh), alpha, gamma, row_block, banks=banks)
            m_ih, m_hh = lstm_unmatrix(p.mask, layer.w_ih.shape[1])
            packings[k] = p
            layers.append(FloatLSTM(layer.w_ih * m_ih, layer.w_hh * m_hh, layer.bias))
        return FloatModel(tuple(layers), self.embedding, self.decoder_bias), packings

    @classmethod
    def random(cls, seed: int = 0, vocab: int = 13, emsize: int = 8, hidden: tuple[int, ...] = (12, 12),
               sparsity: float = 0.6, scale: float = 0.4) -> "FloatModel":
        """An untrained model of the right shape: for exercising the hardware without training."""
        rng = np.random.default_rng(seed)
        sizes = [emsize, *hidden, emsize]
        layers = []
        for i, h in zip(sizes[:-1], sizes[1:]):
            w = rng.normal(0, scale, (4 * h, i + h))
            w[rng.random(w.shape) < sparsity] = 0.0
            layers.append(FloatLSTM(w[:, :i], w[:, i:], rng.normal(0, 0.2, 4 * h)))
        return cls(tuple(layers), rng.normal(0, 0.5, (vocab, emsize)), rng.normal(0, 0.1, vocab))


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

    builder = _TileBuilder(array)
    matrices = []
    for l, layer in enumerate(model.layers):
        if layer.w_ih.shape[0] != 4 * layer.hidden:
            raise QuantizeError(f"layer {l}: weight_ih has {layer.w_ih.shape[0]} rows, expected 4*{layer.hidden}")
        matrix = lstm_matrix(layer.w_ih, layer.w_hh)
        bias = layer.bias.reshape(4, layer.hidden).T.reshape(-1)  # interleaved like the rows
        packing = (packings or {}).get(l)
        gate = np.arange(matrix.shape[0]) % 4
        matrices.append(builder.add(
            f"lstm{l}", "lstm", matrix, bias, packing, gate, fmt.act_frac, sat, in_base=base[l],
            in_x=layer.w_ih.shape[1], hidden=layer.hidden, out_base=base[l + 1], cell_base=cell_base[l]))
    matrices.append(builder.add(
        "decoder", "decoder", model.embedding, model.decoder_bias, None, np.zeros(vocab, dtype=int),
        fmt.logit_frac, sat, in_base=base[len(hidden)], in_x=emsize, hidden=0, out_base=-1, cell_base=-1))

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


class _TileBuilder:
    """Accumulates tiles and row blocks of all matrices in execution order."""

    def __init__(self, array: ArrayConfig) -> None:
        self.array = array
        self.tiles: list[_Tile] = []
        self.bias: list[np.ndarray] = []
        self.shift: list[np.ndarray] = []

    def add(self, name, kind, matrix, bias, packing, section, out_frac, sat, *,
            in_base, in_x, hidden, out_base, cell_base) -> MatrixInfo:
        arr, fmt = self.array, self.array.formats
        R, C = matrix.shape
        info = dict(name=name, kind=kind, rows=R, in_base=in_base, in_size=C, in_x=in_x, hidden=hidden,
                    out_base=out_base, cell_base=cell_base)
        addresses = column_addresses(in_base, in_x, C, out_base)
        banks = column_banks(in_x, C, arr.alpha)
        if packing is None:
            packing = combine_columns(matrix, arr.alpha, 0.0, row_block=arr.rows, banks=banks)
        _check_packing(name, matrix, packing, arr)
        # A packing made without the bank rule (an older checkpoint) is split where two columns of a
        # group share a bank: lossless, at the cost of a few more groups.
        packing = split_banks(packing, banks)
        tile_start, block_start = len(self.tiles), len(self.bias)
        packed_cells = nnz = 0
        blocks = []  # per row block: its array columns
        for r0 in range(0, R, arr.rows):
            r1 = min(R, r0 + arr.rows)
            rows = slice(r0, r1)
            # Per-section exponents and the per-row shift/bias of this block.
            e_row = np.zeros(arr.rows, dtype=np.int64)
            for s in np.unique(section[rows]):
                sel = np.flatnonzero(section[rows] == s)
                e = section_exponent(np.abs(matrix[r0 + sel]).max(initial=0.0),
                                     float(np.abs(bias[r0 + sel]).max(initial=0.0)), arr, out_frac)
                e_row[sel] = e
            wq = np.rint(matrix[rows] * 2.0 ** e_row[: r1 - r0, None]).astype(np.int64)
            wq = sat.saturate(wq, fmt.weight_bits, f"{name} weights")
            bq = np.zeros(arr.rows, dtype=np.int64)
            bq[: r1 - r0] = np.rint(bias[rows] * 2.0 ** (e_row[: r1 - r0] + fmt.act_frac))
            bq = sat.saturate(bq, fmt.acc_bits, f"{name} bias")
            self.bias.append(bq)
            self.shift.append(e_row + fmt.act_frac - out_frac)
            groups = [g for g in _block_groups(packing, r0) if np.any(wq[:, list(g)])]
            packed_cells += (r1 - r0) * len(groups)
            nnz += int(np.count_nonzero(wq))
            # A block without groups still needs one (empty) column: its bias makes its result.
            blocks.append([self._column(wq, g, addresses) for g in groups] or [self._column(wq, (), addresses)])
        for tile in _deal(blocks, arr.cols, block_start):
            self.tiles.append(tile.padded(self._column(None, (), addresses), arr.cols))
        return MatrixInfo(
            **info, tile_start=tile_start, n_tiles=len(self.tiles) - tile_start,
            block_start=block_start, n_blocks=len(self.bias) - block_start, dense_cells=R * C,
            packed_cells=packed_cells, nnz=nnz)

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


def _check_packing(name: str, matrix: np.ndarray, packing: Packing, arr: ArrayConfig) -> None:
    if packing.shape != matrix.shape:
        raise QuantizeError(f"{name}: packing is for a {packing.shape} matrix, the weights are {matrix.shape}")
    if packing.alpha > arr.alpha:
        raise QuantizeError(f"{name}: packing groups up to {packing.alpha} columns but the MX cell muxes "
                            f"array.alpha={arr.alpha}; combine again with alpha <= {arr.alpha}")
    if packing.row_block is not None and packing.row_block % arr.rows:
        raise QuantizeError(f"{name}: packing row_block={packing.row_block} is not a multiple of the array "
                            f"height array.rows={arr.rows}; combine with row_block={arr.rows}")
    try:  # on the weights as trained: a nonzero outside the packing means its masks were not applied
        check_packing(matrix, packing)
    except ValueError as e:
        raise QuantizeError(f"{name}: packing does not fit the weights: {e}") from None


def _block_groups(packing: Packing, row: int) -> tuple[tuple[int, ...], ...]:
    for start, stop, groups in packing.blocks:
        if start <= row < stop:
            return groups
    return ()
