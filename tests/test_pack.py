"""The packing stage (ccflow.pack): one definition of packed cells, the same count everywhere."""

import numpy as np
import pytest

from ccflow.arrayconfig import ArrayConfig
from ccflow.combine import check_packing, lstm_unmatrix
from ccflow.design import column_banks
from ccflow.pack import FloatLSTM, FloatModel, PackError, combine_matrix, executed_groups, pack_model
from ccflow.quantize import quantize


def _one_layer(matrix: np.ndarray, in_x: int, vocab: int = 5) -> FloatModel:
    w_ih, w_hh = lstm_unmatrix(matrix, in_x)
    hidden = w_hh.shape[1]
    rng = np.random.default_rng(0)
    return FloatModel((FloatLSTM(w_ih, w_hh, rng.normal(0, 0.1, 4 * hidden)),),
                      rng.normal(0, 0.5, (vocab, hidden)), rng.normal(0, 0.1, vocab))


def test_a_whole_matrix_group_is_not_executed_in_a_block_where_it_holds_no_weight():
    # 8 rows x 4 columns on a 4-row array: columns 0 and 1 are nonzero only in rows 0-1 and 2-3 (block 0),
    # columns 2 and 3 everywhere. Whole-matrix combining puts 0 and 1 in one group; block 1 skips it.
    m = np.zeros((8, 4))
    m[0:2, 0], m[2:4, 1], m[:, 2], m[:, 3] = 1.0, -1.0, 0.5, 0.25
    packing = combine_matrix(m, 2, alpha=2, gamma=0.0, row_block=None)
    assert sorted(packing.blocks[0][2]) == [(0, 1), (2,), (3,)] and packing.packed_cells == 8 * 3
    assert executed_groups(m, packing, 4) == (((0, 1), (2,), (3,)), ((2,), (3,)))
    array = ArrayConfig(rows=4, cols=2, alpha=2)
    model = _one_layer(m, 2)
    packed = pack_model(model, array, {0: packing})
    assert packed.matrices[0].packed_cells == 4 * 3 + 4 * 2 and packed.matrices[0].from_training
    design = quantize(model, array, {0: packing})
    assert [d.packed_cells for d in design.matrices] == [m.packed_cells for m in packed.matrices]
    assert design.packed_cells == packed.packed_cells and design.nnz == packed.nnz == 8 + 8 + 4 + 5 * 2


@pytest.mark.parametrize("rows,alpha,gamma,row_split", [(8, 4, 0.5, False), (8, 8, 0.25, True), (4, 2, 1.0, False)])
def test_the_design_lays_out_exactly_the_packing_stage_cells(rows, alpha, gamma, row_split):
    model, packings = FloatModel.random(seed=rows + alpha, vocab=11, emsize=8, hidden=(16, 12), sparsity=0.7) \
        .combined(alpha, gamma, rows if row_split else None)
    array = ArrayConfig(rows=rows, cols=2, alpha=alpha)
    packed = pack_model(model, array, packings)
    design = quantize(model, array, packings)
    assert [(d.name, d.packed_cells, d.nnz, d.dense_cells) for d in design.matrices] == \
        [(m.name, m.packed_cells, m.nnz, m.dense_cells) for m in packed.matrices]
    # every executed column of every block appears in the tiles: cells = rows in block x its columns
    per_block = np.zeros(design.n_blocks, dtype=int)
    for t in range(design.n_tiles):
        split = int(design.tile_split[t])
        per_block[design.tile_block[t]] += split
        if split < array.cols:
            per_block[design.tile_block[t] + 1] += array.cols - split
    groups = [len(g) for m in packed.matrices for g in m.blocks]
    assert np.all(per_block >= np.maximum(groups, 1)) and per_block.sum() <= design.n_tiles * array.cols


def test_a_matrix_never_combined_is_packed_conflict_free_with_the_bank_rule():
    model = FloatModel.random(seed=3, vocab=9, emsize=8, hidden=(12,), sparsity=0.6)
    array = ArrayConfig(rows=8, cols=2, alpha=4)
    packed = pack_model(model, array)
    for m in packed.matrices:
        assert not m.from_training and m.packing.gamma == 0 and m.packing.row_block == array.rows
        assert np.array_equal(m.packing.mask, m.matrix != 0), "conflict-free: no weight lost"
        check_packing(m.matrix, m.packing, banks=column_banks(m.in_x, m.matrix.shape[1], array.alpha))
        assert m.packed_cells <= m.dense_cells
    assert packed.nnz == sum(int(np.count_nonzero(m.matrix)) for m in packed.matrices)


def test_a_packing_the_array_cannot_execute_is_refused_in_one_line():
    model, packings = FloatModel.random(seed=1, vocab=7, emsize=8, hidden=(8,)).combined(8, 0.5, None)
    with pytest.raises(PackError, match=r"lstm0: .*array.alpha=4; combine again with alpha <= 4"):
        pack_model(model, ArrayConfig(rows=8, cols=2, alpha=4), packings)
    _, by_rows = FloatModel.random(seed=1, vocab=7, emsize=8, hidden=(8,)).combined(4, 0.0, 12)
    with pytest.raises(PackError, match="row_block=12 is not a multiple of the array height array.rows=8"):
        pack_model(model, ArrayConfig(rows=8, cols=2, alpha=4), by_rows)
