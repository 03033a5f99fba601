"""The integer reference: computes, per token, exactly what the hardware computes.

It executes a :class:`~ccflow.design.Design` the way the array and controller
do -- tile by tile, the same gathers through the same selects, the same
saturating accumulation order, the same shifts and table lookups -- so the RTL,
the HLS C++ and this model agree bit for bit. It is vectorised over a batch of
independent streams so a whole test split can be scored in seconds; batch
element 0 alone is what a test bench compares against.

One step (one token), for each stream:

1. ``act[0:E] = embedding[token]``
2. for each LSTM layer: every row block's accumulator starts at its bias and
   adds, tile by tile, its columns' ``sum_c weight[r, c] * act[addr[c, sel[r, c]]]``
   with saturation (a tile's columns before ``split`` belong to one block, the
   rest to the next); the block result becomes ``z = sat(round_shift(acc, shift))``;
   the pointwise unit turns z (i, f, g, o of each unit) into c and h; the new h
   is committed to ``act`` once the whole layer is done (the layer itself still
   reads the old h).
3. the decoder's blocks become logits ``sat(round_shift(acc, shift))`` in Q.logit_frac.
"""

from __future__ import annotations

import math

import numpy as np

from .corpus import batchify
from .design import Design, MatrixInfo
from .fixedpoint import SaturationCounter, bounds, round_shift


class ArrayModel:
    """The MX array, its accumulators and the per-row shift, for any design laid out in tiles.

    ``accumulate`` runs one matrix over a batch of input vectors read from ``act`` [B, act_size]
    (the LSTM: the activation memory of every stream; a CNN: the input vector of every output
    position); ``requantize`` shifts and saturates the result. The LSTM's :class:`GoldenModel`
    and the CNN golden model (``ccflow.cnn_quantize``) both execute their matrices here.
    """

    def __init__(self, design, sat: SaturationCounter) -> None:
        self.design, self.sat = design, sat
        fmt = design.array.formats
        self._acc_lo, self._acc_hi = bounds(fmt.acc_bits)
        # The act address every cell reads: the group's input picked by the cell's select.
        t = np.arange(design.n_tiles)[:, None, None]
        c = np.arange(design.array.cols)[None, None, :]
        self._cell_addr = design.tile_addr[t, c, design.tile_sel]  # [T, rows, cols]
        self._in_a = np.arange(design.array.cols)[None, :] < design.tile_split[:, None]  # [T, cols]
        self._segments = {m.name: _segments(design, m) for m in design.matrices}
        self._inputs = {m.name: m.column_addresses() for m in design.matrices}
        self._dense = {m.name: _dense_matrix(design, m) for m in design.matrices} if _float_exact(design) else {}


    def accumulate(self, m: MatrixInfo, act: np.ndarray, trace: list | None = None) -> np.ndarray:
        """Block accumulators [batch, n_blocks * rows] after all tiles of the matrix, inputs read from
        ``act`` [batch, act_size]; with ``trace``, every block's accumulators are appended to it.

        Shortcut, exact by construction: when even the sum of |w * x| plus |bias| of
        every row stays inside the accumulator, no running sum can saturate, so the
        tile-by-tile result equals ``bias + W @ act`` -- one float64 matrix product,
        exact because every partial sum is an integer below 2**53. Otherwise (or
        without the shortcut) the tiles are replayed as the hardware runs them.
        """
        if m.name in self._dense:
            w, w_abs, row_abs, bias, bias_abs = self._dense[m.name]
            x = act[:, self._inputs[m.name]].astype(np.float64)
            limit = min(-self._acc_lo - 1, self._acc_hi)
            x_max = np.abs(x).max(axis=1, keepdims=True)
            # cheap bound max|x| * sum|w| first; the exact sum of |w x| only when that one fails
            if (x_max * row_abs + bias_abs).max() <= limit or (np.abs(x) @ w_abs + bias_abs).max() <= limit:
                acc = (x @ w).astype(np.int64) + bias
                if trace is not None:
                    trace.extend(acc.reshape(len(act), m.n_blocks, -1).transpose(1, 0, 2))
                return acc
        return self._accumulate_tiles(m, act, trace)

    def _accumulate_tiles(self, m: MatrixInfo, act: np.ndarray, trace: list | None) -> np.ndarray:
        d = self.design
        tiles = slice(m.tile_start, m.tile_start + m.n_tiles)
        vals = act[:, self._cell_addr[tiles]]  # [B, nt, rows, cols]
        prod = vals * d.tile_weight[tiles]
        sum_a = np.einsum("btrc,tc->btr", prod, self._in_a[tiles])
        sum_b = prod.sum(axis=3) - sum_a
        # The contributions in the order the accumulator sees them: A of tile 0, (B of tile 0), A of tile 1, ...
        tile, part_b, block, first, last = self._segments[m.name]
        contrib = np.where(part_b[None, :, None], sum_b[:, tile], sum_a[:, tile])  # [B, ns, rows]
        bias = d.block_bias[m.block_start: m.block_start + m.n_blocks]  # [nb, rows]
        # Fast path: if no running sum leaves the accumulator range, saturation never fires.
        running = np.cumsum(contrib, axis=1)
        starts = np.flatnonzero(first)  # starts[0] == 0
        before = np.zeros_like(running[:, : len(starts)])
        before[:, 1:] = running[:, starts[1:] - 1]
        partial = bias[block][None] + running - before[:, block]
        if partial.min() >= self._acc_lo and partial.max() <= self._acc_hi:
            acc = partial[:, last]
        else:
            acc = self._accumulate_saturating(contrib, block, bias, first)
        if trace is not None:
            trace.extend(acc.transpose(1, 0, 2))
        return acc.reshape(len(act), -1)

    def _accumulate_saturating(self, contrib, block, bias, first) -> np.ndarray:
        fmt = self.design.array.formats
        acc = np.zeros((contrib.shape[0],) + bias.shape, dtype=np.int64)
        for k in range(contrib.shape[1]):
            b = block[k]
            start = bias[b][None] if first[k] else acc[:, b]
            acc[:, b] = self.sat.saturate(start + contrib[:, k], fmt.acc_bits, "accumulator")
        return acc

    def requantize(self, m: MatrixInfo, acc: np.ndarray, site: str) -> np.ndarray:
        """The accumulators shifted per row into the output format, saturated (counted at ``site``)."""
        d = self.design
        shift = d.block_shift[m.block_start: m.block_start + m.n_blocks].reshape(-1)
        return self.sat.saturate(round_shift(acc, shift), d.array.formats.act_bits, site)


class GoldenModel:
    def __init__(self, design: Design, batch: int = 1, trace: bool = False) -> None:
        self.design = design
        self.batch = batch
        self.trace_enabled = trace
        self.sat = SaturationCounter()
        self.array = ArrayModel(design, self.sat)
        self.reset()

    def reset(self) -> None:
        """Zero the recurrent state, as the hardware's reset does."""
        d = self.design
        self.act = np.zeros((self.batch, d.act_size), dtype=np.int64)
        self.cell = np.zeros((self.batch, d.cell_size), dtype=np.int64)
        self.sat.reset()
        self.trace: list[np.ndarray] = []

    def step(self, tokens) -> np.ndarray:
        """Advance every stream by one token; returns logits [batch, vocab] (int, Q.logit_frac)."""
        d = self.design
        tokens = np.asarray(tokens, dtype=np.int64).reshape(self.batch)
        if tokens.min() < 0 or tokens.max() >= d.vocab_size:
            raise ValueError(f"token id out of range 0..{d.vocab_size - 1}: {tokens}")
        self.trace = []
        self.act[:, : d.emsize] = d.embedding[tokens]
        trace = self.trace if self.trace_enabled else None
        for m in d.lstm_layers:
            z = self.array.requantize(m, self.array.accumulate(m, self.act, trace), "gate input")
            self.act[:, m.out_base: m.out_base + m.hidden] = self._pointwise(m, z)
        dec = d.decoder
        return self.array.requantize(dec, self.array.accumulate(dec, self.act, trace), "logits")[:, : dec.rows]

    def run(self, tokens) -> np.ndarray:
        """Logits for a single stream of tokens: [len(tokens), vocab]."""
        assert self.batch == 1
        return np.stack([self.step([t])[0] for t in tokens])

    # --- the pointwise unit -------------------------------------------------

    def _lut(self, table: np.ndarray, x: np.ndarray) -> np.ndarray:
        fmt = self.design.array.formats
        half = fmt.lut_size // 2
        index = np.clip(round_shift(x, fmt.lut_shift), -half, half - 1)
        return table[index & (fmt.lut_size - 1)]

    def _pointwise(self, m: MatrixInfo, z: np.ndarray) -> np.ndarray:
        d, fmt = self.design, self.design.array.formats
        gates = z[:, : 4 * m.hidden].reshape(self.batch, m.hidden, 4)
        sig, tanh = d.lut_sigmoid, d.lut_tanh
        i, f = self._lut(sig, gates[..., 0]), self._lut(sig, gates[..., 1])
        g, o = self._lut(tanh, gates[..., 2]), self._lut(sig, gates[..., 3])
        cells = slice(m.cell_base, m.cell_base + m.hidden)
        c = self.sat.saturate(round_shift(f * self.cell[:, cells] + i * g, fmt.act_frac), fmt.cell_bits, "cell")
        self.cell[:, cells] = c
        return self.sat.saturate(round_shift(o * self._lut(tanh, c), fmt.act_frac), fmt.act_bits, "hidden")


def _float_exact(design: Design) -> bool:
    """float64 holds every partial sum of a row exactly (|w x| summed over the act memory < 2**53)."""
    fmt = design.array.formats
    return fmt.weight_bits - 1 + fmt.act_bits - 1 + math.ceil(math.log2(design.act_size + 1)) < 52 \
        and fmt.acc_bits < 53


def _dense_matrix(design: Design, m: MatrixInfo):
    """The matrix the tiles hold: (W [in_size, rows], |W|, row sums of |W|, bias, |bias|), float64 but bias."""
    rows = design.array.rows
    w = np.zeros((design.act_size, m.n_blocks * rows))
    for t in range(m.tile_start, m.tile_start + m.n_tiles):
        block = design.tile_block[t] - m.block_start + (np.arange(design.array.cols) >= design.tile_split[t])
        r = block[None, :] * rows + np.arange(rows)[:, None]  # [rows, cols] matrix row of each cell
        addr = design.tile_addr[t, np.arange(design.array.cols)[None, :], design.tile_sel[t]]
        np.add.at(w, (addr, r), design.tile_weight[t])
    bias = design.block_bias[m.block_start: m.block_start + m.n_blocks].reshape(-1)
    w = w[m.column_addresses()]  # a matrix reads only its own inputs
    return w, np.abs(w), np.abs(w).sum(axis=0), bias, np.abs(bias).astype(np.float64)


def _segments(design: Design, m: MatrixInfo):
    """Each tile's one or two contributions, in accumulator order: (tile, is B, block, first, last).

    Blocks are numbered within the matrix. Block B of a tile starts there and ends in a later tile.
    """
    rows = []
    for t in range(m.n_tiles):
        g = m.tile_start + t
        a = int(design.tile_block[g]) - m.block_start
        rows.append((t, False, a, bool(design.tile_first[g]), bool(design.tile_last[g])))
        if design.tile_split[g] < design.array.cols:
            rows.append((t, True, a + 1, True, False))
    tile, part_b, block, first, last = (np.array(c) for c in zip(*rows))
    return tile, part_b, block, first, last


def fixed_point_bpc(design: Design, data: np.ndarray, streams: int = 16, progress: bool = False) -> float:
    """Bits per character of the integer model on ``data``, scored like the float model."""
    cols = batchify(data, streams)
    model = GoldenModel(design, batch=streams)
    scale = 2.0 ** -design.array.formats.logit_frac
    total = 0.0
    steps = range(cols.shape[0] - 1)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="fixed-point BPC", unit="tok", leave=False)
    for t in steps:
        logits = model.step(cols[t]) * scale
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= logp[np.arange(streams), cols[t + 1]].sum()
    return total / ((cols.shape[0] - 1) * streams) / math.log(2)
