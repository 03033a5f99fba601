"""The packing stage: the one place that decides how a model's matrices go onto the MX array.

Training's combine steps (``prune.combine_model``), ``ccflow combine``, the quantizer behind
``ccflow rtl`` and the experiments all come here; nothing else in the flow calls
``combine_columns`` on a model. Three decisions live here and nowhere else:

* **How a matrix is combined** (:func:`combine_matrix`): column combining with the hardware's
  bank rule (``design.column_banks``), in row blocks of the array height when the config asks for
  a row split (:func:`row_block`).
* **What the array executes** (:func:`pack_model`): every matrix, the decoder included, gets the
  packing from training when it has one (checked against the weights; split to the bank rule when
  an older checkpoint made it without), otherwise conflict-free combining (gamma 0) in blocks of
  the array height, which loses no weight. So a model that was never combined (dense, pruning only)
  still runs on MX cells, with its all-zero columns skipped and its sparse columns shared.
* **Packed cells**, one definition, reported identically by training's log, ``ccflow combine``,
  ``ccflow rtl`` and ``make experiments``: the cells the array executes per token. The array runs
  a matrix in blocks of ``array.rows`` rows; in each block it executes the groups that hold a
  nonzero weight there (:func:`executed_groups`; a group of a whole-matrix packing with nothing in
  a block is skipped in that block). Packed cells = sum over blocks of rows in the block x groups
  executed, over every matrix, decoder included. Padding of the last tile is not counted
  (``Design.n_tiles`` has it). *Nonzero weights* count the same matrices, so utilization =
  nonzero weights / packed cells; *dense cells* = rows x columns of the same matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .combine import Packing, check_packing, combine_columns, lstm_matrix, lstm_unmatrix, split_banks
from .design import MatrixTotals, column_banks


class PackError(ValueError):
    """A packing the array cannot execute; the message says which matrix, why, and the fix."""


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
    """A trained model as float64 numpy arrays: what packing and quantization read."""

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
            p = combine_matrix(lstm_matrix(layer.w_ih, layer.w_hh), layer.w_ih.shape[1], alpha, gamma, row_block)
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


def row_block(cfg) -> int | None:
    """The row split a config asks of combining: blocks of the array height, or the whole matrix."""
    return cfg.array.rows if cfg.combine.row_split else None


def combine_matrix(matrix: np.ndarray, in_x: int, alpha: int, gamma: float, row_block: int | None) -> Packing:
    """Column-combine one matrix whose first ``in_x`` columns are read from the x region, the
    rest from the layer's own h, so that every group obeys the act memory's bank rule."""
    banks = column_banks(in_x, matrix.shape[1], alpha)
    return combine_columns(matrix, alpha, gamma, row_block, banks=banks)


@dataclass(frozen=True)
class MatrixPacking:
    """One matrix as the array executes it."""

    name: str  # "lstm0", ..., "decoder"; a CNN's "conv0", ..., "fc4"
    kind: str  # "lstm", "decoder", "conv" or "fc"
    matrix: np.ndarray  # float weights in array row order (LSTM: unit-major gates, see combine.lstm_matrix)
    in_x: int  # columns read from the x region; the rest read the layer's own h
    packing: Packing
    blocks: tuple[tuple[tuple[int, ...], ...], ...]  # per array row block: the groups it executes
    rows_per_block: int
    from_training: bool  # False: the conflict-free packing of a matrix never combined

    @property
    def dense_cells(self) -> int:
        return int(self.matrix.size)

    @property
    def packed_cells(self) -> int:
        rows = self.matrix.shape[0]
        return sum(min(self.rows_per_block, rows - b * self.rows_per_block) * len(g)
                   for b, g in enumerate(self.blocks))

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.matrix))


@dataclass(frozen=True)
class ModelPacking(MatrixTotals):
    """Every matrix of a model as the array executes it, with the figures everyone reports."""

    matrices: tuple[MatrixPacking, ...]

    @property
    def utilization(self) -> float:
        return self.nnz / max(self.packed_cells, 1)

    def lines(self) -> list[str]:
        """One line per matrix and a total, as ``ccflow combine`` prints them."""
        out = []
        for m in self.matrices:
            r, c = m.matrix.shape
            out.append(f"{m.name:>8}: {r} x {c}, {sum(len(g) for g in m.blocks):,} block columns, "
                       f"{m.packed_cells:,} packed cells ({m.dense_cells / max(m.packed_cells, 1):.2f}x fewer than "
                       f"{m.dense_cells:,}), {m.nnz:,} nonzero weights, utilization {m.nnz / max(m.packed_cells, 1):.1%}"
                       f"{'' if m.from_training else ' (never combined: conflict-free)'}")
        out.append(f"   total: {self.packed_cells:,} packed cells ({self.dense_cells / max(self.packed_cells, 1):.2f}x "
                   f"fewer than {self.dense_cells:,} dense), {self.nnz:,} nonzero weights, "
                   f"utilization {self.utilization:.1%}")
        return out


def float_model(model):
    """The float description of a trained torch model: :class:`FloatModel` for the LSTM language
    model, ``cnn.FloatCnn`` (batch norm folded) for a CNN."""
    if hasattr(getattr(model, "module", model), "stages"):
        from .cnn import FloatCnn

        return FloatCnn.from_torch(getattr(model, "module", model))
    return FloatModel.from_torch(getattr(model, "module", model))


def model_matrices(model) -> list[tuple[str, str, np.ndarray, int]]:
    """(name, kind, matrix, in_x) of every matrix the array runs, in execution order.

    A CNN's matrices are its convolutions (out x (in * kh * kw)) and Linear layers, named by
    their index among them (``conv0``, ``conv1``, ``fc2``, ...); every column is an input.
    """
    if hasattr(model, "stages"):  # cnn.FloatCnn
        return [(f"{st.kind}{k}", st.kind, st.matrix, st.matrix.shape[1]) for k, st in enumerate(model.weight_stages)]
    out = [(f"lstm{k}", "lstm", lstm_matrix(layer.w_ih, layer.w_hh), layer.w_ih.shape[1])
           for k, layer in enumerate(model.layers)]
    out.append(("decoder", "decoder", model.embedding, model.embedding.shape[1]))
    return out


def pack_model(model, array, packings: dict[int, Packing] | None = None) -> ModelPacking:
    """Every matrix of a :class:`FloatModel` or ``cnn.FloatCnn`` as the array executes it;
    ``packings`` are training's, by index of the prunable matrix (``prune.masked_matrices``)."""
    out = []
    for k, (name, kind, matrix, in_x) in enumerate(model_matrices(model)):
        trained = (packings or {}).get(k) if kind != "decoder" else None
        packing = hardware_packing(name, matrix, in_x, array, trained)
        out.append(MatrixPacking(name, kind, matrix, in_x, packing, executed_groups(matrix, packing, array.rows),
                                 array.rows, trained is not None))
    return ModelPacking(tuple(out))


def hardware_packing(name: str, matrix: np.ndarray, in_x: int, array, trained: Packing | None) -> Packing:
    """Training's packing, checked and split to the bank rule, or the lossless conflict-free one."""
    banks = column_banks(in_x, matrix.shape[1], array.alpha)
    if trained is None:
        return combine_columns(matrix, array.alpha, 0.0, row_block=array.rows, banks=banks)
    if trained.shape != matrix.shape:
        raise PackError(f"{name}: packing is for a {trained.shape} matrix, the weights are {matrix.shape}")
    if trained.alpha > array.alpha:
        raise PackError(f"{name}: packing groups up to {trained.alpha} columns but the MX cell muxes "
                        f"array.alpha={array.alpha}; combine again with alpha <= {array.alpha}")
    if trained.row_block is not None and trained.row_block % array.rows:
        raise PackError(f"{name}: packing row_block={trained.row_block} is not a multiple of the array "
                        f"height array.rows={array.rows}; combine with row_block={array.rows}")
    try:  # on the weights as trained: a nonzero outside the packing means its masks were not applied
        check_packing(matrix, trained)
    except ValueError as e:
        raise PackError(f"{name}: packing does not fit the weights: {e}") from None
    # Made without the bank rule (an older checkpoint): split where two columns of a group share a
    # bank; lossless, at the cost of a few more groups.
    return split_banks(trained, banks)


def executed_groups(matrix: np.ndarray, packing: Packing, rows: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Per block of ``rows`` matrix rows: the packing's groups with a nonzero weight in the block."""
    nonzero = matrix != 0
    out = []
    for r0 in range(0, matrix.shape[0], rows):
        live = nonzero[r0:r0 + rows].any(axis=0)  # columns with a nonzero in this block
        out.append(tuple(g for g in _groups_at(packing, r0) if live[list(g)].any()))
    return tuple(out)


def _groups_at(packing: Packing, row: int) -> tuple[tuple[int, ...], ...]:
    for start, stop, groups in packing.blocks:
        if start <= row < stop:
            return groups
    return ()
