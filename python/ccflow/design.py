"""The quantized model laid out on the array: every ROM's contents plus the layout.

A :class:`Design` is what the quantizer produces and what everything after it
reads: the golden model executes it, the renderer writes its arrays as
``$readmemh`` files and HLS constant arrays, the test benches load it back.
Saved as ``design.npz`` next to ``array_config.json``.

Layout (docs/hardware.md has the cycle-level story):

* **Activation memory** ``act``: ``[emb (E) | h_0 (H_0) | ... | h_{L-1}]``, every
  region padded to a multiple of ``alpha`` words (:func:`act_layout`). The hardware
  keeps it in ``alpha`` banks, address a in bank ``a mod alpha`` at word
  ``a div alpha``, and array input slot k always reads bank k, so every group holds
  at most one column per bank (the bank rule of column combining). LSTM layer l
  reads ``[x; h_l]``: matrix column j < ``in_x`` is act address ``in_base + j`` (x),
  column j >= ``in_x`` is ``out_base + j - in_x`` (its own h); the decoder reads
  ``h_{L-1}`` (``in_x = in_size``). :meth:`MatrixInfo.column_addresses` says it once.
* **Tiles**: every matrix is cut into row blocks of ``rows`` rows, each block
  into its column groups; the groups of a matrix's blocks, in order, are dealt
  into tiles of ``cols`` array columns. Tile t holds a weight and a select per
  cell, and for each array column the act addresses of its group's (up to
  ``alpha``) inputs. Why tiles may hold two blocks: a block's group count is
  rarely a multiple of ``cols``, and giving each block whole tiles wasted 10-30%
  of the array. So a block may end mid-tile and the next block start in the
  same tile: columns ``[0, split)`` belong to block ``tile_block`` (call it A),
  columns ``[split, cols)`` to block A + 1 (B). B never ends in the tile it
  starts in, so at most one block finishes per cycle. Tiles never span two
  matrices. Tiles are stored in execution order.
* **Row blocks** carry, per row, the bias (accumulator scale) and the right
  shift that turns the accumulator into a gate input or a logit.
* LSTM rows are interleaved unit-major (row 4j+k = gate k in i,f,g,o order of
  unit j), so a block holds rows/4 whole units for the pointwise unit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .arrayconfig import ArrayConfig


@dataclass(frozen=True)
class MatrixInfo:
    name: str  # "lstm0", ..., "decoder"
    kind: str  # "lstm" or "decoder"
    rows: int  # logical rows: 4H for an LSTM layer, V for the decoder
    in_base: int  # act address of matrix column 0 (the x region)
    in_size: int  # columns: I + H for an LSTM layer, E for the decoder
    in_x: int  # columns read from the x region; the rest read the layer's own h at out_base
    hidden: int  # H (LSTM), 0 for the decoder
    out_base: int  # act address where this layer's h is committed (LSTM), -1 for the decoder
    cell_base: int  # first cell-state address of this layer (LSTM), -1 for the decoder
    tile_start: int
    n_tiles: int
    block_start: int
    n_blocks: int
    dense_cells: int  # rows x in_size, the cells a dense array would spend
    packed_cells: int  # sum over blocks of rows x groups actually packed (padding excluded)
    nnz: int  # nonzero weights of the float matrix the packing lays out (ccflow.pack)

    def column_addresses(self) -> np.ndarray:
        return column_addresses(self.in_base, self.in_x, self.in_size, self.out_base)


def column_addresses(in_base: int, in_x: int, in_size: int, out_base: int) -> np.ndarray:
    """Act address of every matrix column: x from in_base, then the layer's own h from out_base."""
    j = np.arange(in_size)
    return np.where(j < in_x, in_base + j, out_base + j - in_x)


def round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def act_layout(emsize: int, hidden: list[int], alpha: int, units: int) -> dict:
    """Where everything lives: act region bases (each padded to alpha words: one bank row per
    alpha words) and cell-state bases (each padded to whole row blocks of ``units`` units)."""
    sizes = [round_up(emsize, alpha)] + [round_up(h, alpha) for h in hidden]
    act_base = np.cumsum([0] + sizes).tolist()  # region r starts at act_base[r]; emb is region 0
    cells = [round_up(h, units) for h in hidden]
    cell_base = np.cumsum([0] + cells).tolist()
    return {"act_base": act_base[:-1], "act_size": act_base[-1], "cell_base": cell_base[:-1],
            "cell_size": cell_base[-1]}


def column_banks(in_x: int, in_size: int, alpha: int) -> np.ndarray:
    """The act bank each matrix column is read from: the bank rule of column combining.

    Regions start at multiples of alpha (:func:`act_layout`), so x column j is in bank
    j mod alpha and own-h column j in bank (j - in_x) mod alpha. Training combines with
    these banks (``combine_columns(..., banks=...)``) so the packing maps onto the banks as is.
    """
    j = np.arange(in_size)
    return np.where(j < in_x, j, j - in_x) % alpha


def design_kind(directory: str | Path) -> str:
    """"cnn" or "lstm": which design an rtl folder's ``design.npz`` holds (what ``ccflow rtl`` wrote)."""
    path = Path(directory) / "design.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `make rtl` (ccflow rtl) first")
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"])).get("kind", "lstm")


class MatrixTotals:
    """The packing figures of anything holding ``matrices`` (each with packed_cells, dense_cells, nnz):
    summed here once for the packing stage, the LSTM design and the CNN design."""

    @property
    def packed_cells(self) -> int:
        return sum(m.packed_cells for m in self.matrices)

    @property
    def dense_cells(self) -> int:
        return sum(m.dense_cells for m in self.matrices)

    @property
    def nnz(self) -> int:
        return sum(m.nnz for m in self.matrices)


@dataclass(frozen=True)
class Design(MatrixTotals):
    array: ArrayConfig
    vocab_size: int
    emsize: int
    act_size: int  # entries in the activation memory
    cell_size: int  # entries in the cell-state memory
    matrices: tuple[MatrixInfo, ...]
    tile_weight: np.ndarray  # int   [T, rows, cols]
    tile_sel: np.ndarray  # int   [T, rows, cols]
    tile_addr: np.ndarray  # int   [T, cols, alpha]  act addresses per array column
    tile_block: np.ndarray  # int   [T]  global row block A of columns [0, split)
    tile_first: np.ndarray  # bool  [T]  block A starts here (its accumulator starts at bias)
    tile_last: np.ndarray  # bool  [T]  block A ends here (its result is ready)
    tile_split: np.ndarray  # int  [T]  1..cols; < cols: block A + 1 starts at column split
    block_bias: np.ndarray  # int   [NB, rows]
    block_shift: np.ndarray  # int  [NB, rows]
    embedding: np.ndarray  # int   [V, E] in activation format
    lut_sigmoid: np.ndarray  # int [lut_size], address = index mod lut_size
    lut_tanh: np.ndarray  # int    [lut_size]
    quant_saturations: int = 0  # values clipped while quantizing (weights, biases, embedding)

    _ARRAYS = ("tile_weight", "tile_sel", "tile_addr", "tile_block", "tile_first", "tile_last", "tile_split",
               "block_bias", "block_shift", "embedding", "lut_sigmoid", "lut_tanh")

    @property
    def n_tiles(self) -> int:
        return int(self.tile_weight.shape[0])

    @property
    def n_blocks(self) -> int:
        return int(self.block_bias.shape[0])

    @property
    def lstm_layers(self) -> tuple[MatrixInfo, ...]:
        return tuple(m for m in self.matrices if m.kind == "lstm")

    @property
    def decoder(self) -> MatrixInfo:
        return self.matrices[-1]

    @property
    def ideal_cycles(self) -> float:
        """Packed cells / array cells: the cycles per token of a perfectly busy array."""
        return self.packed_cells / self.array.cells

    def save(self, directory: str | Path) -> None:
        meta = {"vocab_size": self.vocab_size, "emsize": self.emsize, "act_size": self.act_size,
                "cell_size": self.cell_size, "quant_saturations": self.quant_saturations}
        save_design_files(self, directory, meta)

    @classmethod
    def load(cls, directory: str | Path) -> "Design":
        array, meta, arrays = load_design_files(directory, "lstm", cls._ARRAYS)
        return cls(array=array, **meta, **arrays)


def save_design_files(design, directory: str | Path, meta: dict) -> None:
    """``array_config.json`` + ``design.npz`` (``meta`` as JSON with the matrices, and the ``_ARRAYS``)
    of an LSTM or CNN design: what the benches, the HLS check and ``ccflow sim`` load back."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    design.array.save(directory / "array_config.json")
    meta = {**meta, "matrices": [asdict(m) for m in design.matrices]}
    np.savez(directory / "design.npz", meta=np.array(json.dumps(meta)),
             **{k: getattr(design, k) for k in design._ARRAYS})


def load_design_files(directory: str | Path, kind: str, names) -> tuple[ArrayConfig, dict, dict]:
    """(array, meta with ``matrices`` as MatrixInfo and without ``kind``, arrays) of a saved design of
    ``kind`` ("lstm" or "cnn"); a missing file or a design of the other kind is a one-line error."""
    directory = Path(directory)
    for f in ("array_config.json", "design.npz"):
        if not (directory / f).is_file():
            raise FileNotFoundError(f"{directory / f} is missing; run `make rtl` (ccflow rtl) first")
    array = ArrayConfig.load(directory / "array_config.json")
    with np.load(directory / "design.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        found = meta.pop("kind", "lstm")
        if found != kind:
            raise ValueError(f"{directory / 'design.npz'} holds {'a CNN' if found == 'cnn' else 'an LSTM'} "
                             f"design; load it with {'ccflow.cnn_quantize.CnnDesign' if found == 'cnn' else 'ccflow.design.Design'}.load")
        arrays = {k: z[k] for k in names}
    meta["matrices"] = tuple(MatrixInfo(**m) for m in meta["matrices"])
    return array, meta, arrays
