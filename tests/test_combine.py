"""Column combining: every invariant of a packing, checked on arbitrary small matrices.

The invariants are recomputed here from the definitions (BRIEF section 4), not through the
module's own helpers, so a bug shared by ``combine_columns`` and ``check_packing`` still fails.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ccflow.combine import (
    Packing,
    check_packing,
    combine_columns,
    conflicts,
    conv2d_matrix,
    conv2d_unmatrix,
    greedy_combine_reference,
    linear_matrix,
    lstm_matrix,
    lstm_unmatrix,
    split_banks,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Few distinct values: plenty of exact zeros and of magnitude ties (+-1, +-2), plus arbitrary floats.
values = st.one_of(st.just(0.0), st.just(0.0), st.sampled_from([1.0, -1.0, 2.0, -2.0]),
                   st.floats(-8, 8, allow_nan=False, width=32))


@st.composite
def matrices(draw, max_rows=20, max_cols=20):
    shape = (draw(st.integers(0, max_rows)), draw(st.integers(0, max_cols)))
    return draw(arrays(np.float64, shape, elements=values))


alphas = st.integers(1, 8)
gammas = st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 1.75]), st.floats(0, 3, allow_nan=False))
row_blocks = st.one_of(st.none(), st.integers(1, 9))


def random_sparse(rng, rows, cols, density):
    return rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)


def group_conflicts(w: np.ndarray, group) -> int:
    per_row = (w[:, list(group)] != 0).sum(axis=1)
    return int(np.maximum(per_row - 1, 0).sum())


def assert_valid(w: np.ndarray, p: Packing, alpha: int, gamma: float, row_block: int | None) -> None:
    rows, cols = w.shape
    nz = w != 0
    assert p.shape == (rows, cols) and p.mask.shape == (rows, cols) and p.mask.dtype == bool
    assert (p.alpha, p.gamma, p.row_block) == (alpha, gamma, row_block)
    # blocks cover the rows, consecutively, row_block high (the last may be shorter)
    bounds = [(a, b) for a, b, _ in p.blocks]
    if row_block is None:
        assert bounds == [(0, rows)]
    else:
        assert bounds == [(a, min(a + row_block, rows)) for a in range(0, rows, row_block)]
    assert not (p.mask & ~nz).any(), "mask keeps a zero weight"
    for a, b, groups in p.blocks:
        placed = sorted(c for g in groups for c in g)
        assert placed == np.flatnonzero(nz[a:b].any(axis=0)).tolist(), "groups must partition nonzero columns"
        budget = math.floor(gamma * (b - a))
        for g in groups:
            assert 1 <= len(g) <= alpha
            assert list(g) == sorted(g)
            assert group_conflicts(w[a:b], g) <= budget, "conflicts on the original weights over budget"
            assert conflicts(w, g, slice(a, b)) == group_conflicts(w[a:b], g)
            mag = np.abs(w[a:b][:, list(g)])
            kept = p.mask[a:b][:, list(g)]
            for r in range(b - a):
                if mag[r].max(initial=0) > 0:  # exactly one kept: the first of the largest
                    assert kept[r].sum() == 1 and kept[r, int(np.argmax(mag[r]))], (a + r, g)
                else:
                    assert not kept[r].any()
    cells = sum((b - a) * len(groups) for a, b, groups in p.blocks)
    assert p.packed_cells == cells
    assert p.groups_total == sum(len(groups) for _, _, groups in p.blocks)
    assert p.nnz == int(p.mask.sum())
    assert p.utilization == (p.mask.sum() / cells if cells else 0.0)
    if gamma == 0:
        assert np.array_equal(p.mask, nz), "conflict-free combining keeps every nonzero"
    check_packing(w * p.mask, p)


# ---------------------------------------------------------------- the invariants


@SETTINGS
@given(matrices(), alphas, gammas, row_blocks)
def test_packing_invariants(w, alpha, gamma, row_block):
    assert_valid(w, combine_columns(w, alpha, gamma, row_block), alpha, gamma, row_block)


@SETTINGS
@given(matrices(max_rows=12, max_cols=12), alphas, gammas, row_blocks)
def test_greedy_reference_invariants(w, alpha, gamma, row_block):
    assert_valid(w, greedy_combine_reference(w, alpha, gamma, row_block), alpha, gamma, row_block)


@SETTINGS
@given(matrices(), alphas, gammas, row_blocks)
def test_deterministic_and_torch_equals_numpy(w, alpha, gamma, row_block):
    p = combine_columns(w, alpha, gamma, row_block)
    assert combine_columns(w.copy(), alpha, gamma, row_block) == p
    assert combine_columns(torch.from_numpy(w), alpha, gamma, row_block) == p


def test_same_result_under_any_hash_seed():
    """Determinism across processes: nothing may depend on set/dict/hash order."""
    code = ("import json, numpy as np; from ccflow.combine import combine_columns as c; "
            "r = np.random.default_rng(3); w = r.standard_normal((70, 90)) * (r.random((70, 90)) < 0.2); "
            "print(json.dumps([c(w, 8, 0.5).to_dict(), c(w, 4, 0.25, 16).to_dict()]))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert runs[0] == runs[1] and len(runs[0]) > 1000


@SETTINGS
@given(matrices(max_rows=30, max_cols=40), alphas, st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_blocks_get_their_own_groups(w, alpha, gamma):
    """Row split = combining each block on its own: block i of the split equals the block alone."""
    p = combine_columns(w, alpha, gamma, row_block=7)
    for a, b, groups in p.blocks:
        alone = combine_columns(w[a:b], alpha, gamma)
        assert alone.blocks[0][2] == groups
        assert np.array_equal(alone.mask, p.mask[a:b])


@pytest.mark.parametrize("seed", range(12))
def test_packing_invariants_larger(seed):
    """Bigger than hypothesis draws: many groups per block, so the repair sweep really moves columns."""
    rng = np.random.default_rng(100 + seed)
    w = random_sparse(rng, int(rng.integers(20, 120)), int(rng.integers(40, 150)), rng.uniform(0.02, 0.4))
    alpha, gamma = int(rng.integers(1, 9)), float(rng.choice([0.0, 0.05, 0.1, 0.5, 1.75]))
    row_block = [None, 4, 16, 33][seed % 4]
    assert_valid(w, combine_columns(w, alpha, gamma, row_block), alpha, gamma, row_block)


def test_repair_rolls_back_a_group_it_cannot_empty():
    """Victim {0, 1}: column 0 fits into {2} but column 1 fits nowhere, so nothing may move."""
    from ccflow.combine import _dissolve, _pack_blocks

    nz = np.array([[1, 0, 0, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=bool)
    bits, counts = _pack_blocks(nz, [(0, 4)])
    gid = np.array([[0, 0, 1, 2]])
    out = _dissolve(bits, counts, np.array([0]), 3, gid.copy())
    assert len({tuple(np.flatnonzero(out[0] == g)) for g in set(out[0].tolist())}) == 3
    assert out[0, 0] == out[0, 1] != out[0, 2] != out[0, 3]


@pytest.mark.parametrize("rows", [10, 40, 100, 300])  # one uint8 word, several, one uint64, several
def test_repair_empties_a_group_whatever_the_word_layout(rows):
    """Groups {0, 1}, {2}, {3}: column 3 fits into {0, 1}, so the repair drops a group."""
    from ccflow.combine import _dissolve, _pack_blocks

    nz = np.zeros((rows, 4), dtype=bool)
    nz[0, 0] = nz[rows - 1, 1] = nz[0, 2] = nz[rows // 2, 2] = nz[rows // 2, 3] = True
    bits, counts = _pack_blocks(nz, [(0, rows)])
    out = _dissolve(bits, counts, np.array([0]), 3, np.array([[0, 0, 1, 2]]))[0]
    assert out[0] == out[1] == out[3] != out[2]


def test_all_zero_columns_belong_to_no_group():
    w = np.zeros((6, 5))
    w[0:3, 1] = 1.0  # column 1: nonzero in the first block only
    w[3:6, 3] = 2.0  # column 3: in the second only
    p = combine_columns(w, alpha=4, gamma=0.0, row_block=3)
    assert p.blocks == ((0, 3, ((1,),)), (3, 6, ((3,),)))
    assert p.packed_cells == 6 and p.utilization == 1.0


def test_empty_and_degenerate_shapes():
    assert combine_columns(np.zeros((0, 0)), 8).blocks == ((0, 0, ()),)
    assert combine_columns(np.zeros((5, 0)), 8).packed_cells == 0
    assert combine_columns(np.zeros((0, 4)), 8, row_block=4).blocks == ()
    assert combine_columns(np.zeros((3, 4)), 8).utilization == 0.0


# ---------------------------------------------------------------- known answers


def test_disjoint_columns_pack_alpha_per_group():
    w = np.eye(12)  # every column nonzero in its own row: no conflicts at all
    p = combine_columns(w, alpha=4)
    assert p.groups_total == 3 and p.packed_cells == 36 and p.nnz == 12
    assert all(len(g) == 4 for g in p.blocks[0][2])


def test_conflicting_pair_needs_gamma_and_prunes_the_smaller():
    w = np.array([[3.0, -5.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert combine_columns(w, 2, gamma=0.0).groups_total == 2  # one conflict (row 0): not allowed
    assert combine_columns(w, 2, gamma=0.24).groups_total == 2  # floor(0.24 * 4) = 0
    p = combine_columns(w, 2, gamma=0.25)  # floor(0.25 * 4) = 1 conflict allowed
    assert p.blocks[0][2] == ((0, 1),)
    assert p.mask.tolist() == [[False, True], [True, False], [False, True], [False, False]]
    assert p.nnz == 3 and p.packed_cells == 4 and p.utilization == 0.75


def test_magnitude_tie_keeps_lowest_column():
    w = np.array([[2.0, -2.0, 1.0], [0.0, 0.0, 1.0]])
    p = combine_columns(w, 3, gamma=1.0)  # budget 2: row 0 has 3 nonzeros = 2 conflicts
    assert p.blocks[0][2] == ((0, 1, 2),)
    assert p.mask.tolist() == [[True, False, False], [False, False, True]]


def test_int8_weights_prune_by_true_magnitude():
    w = np.array([[-128, 100], [0, 5]], dtype=np.int8)  # abs(-128) must not wrap to -128
    p = combine_columns(w, 2, gamma=0.5)
    assert p.mask.tolist() == [[True, False], [False, True]]


def test_conflicts_helper():
    w = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert conflicts(w, (0, 1, 2)) == 3
    assert conflicts(w, (0, 2)) == 2
    assert conflicts(w, (0, 1, 2), rows=slice(2, 4)) == 0
    assert conflicts(torch.tensor(w), [1]) == 0


# ---------------------------------------------------------------- against the greedy merge


def naive_greedy_groups(w: np.ndarray, alpha: int, gamma: float, banks=None) -> set[tuple[int, ...]]:
    """The greedy merge exactly as specified, recomputing every pair after every merge.

    With ``banks``, pairs that share a bank are not candidates (the bank rule).
    """
    nz = w != 0
    budget = math.floor(gamma * w.shape[0])
    groups = [[c] for c in range(w.shape[1]) if nz[:, c].any()]
    while True:
        best = None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                merged = groups[i] + groups[j]
                if len(merged) > alpha:
                    continue
                if banks is not None and len({banks[c] for c in merged}) < len(merged):
                    continue
                conf = group_conflicts(w, merged)
                if conf <= budget:
                    key = (conf, len(merged), min(groups[i]), min(groups[j]))
                    best = min(best, (key, i, j)) if best else (key, i, j)
        if best is None:
            return {tuple(sorted(g)) for g in groups}
        _, i, j = best
        groups[i] += groups.pop(j)


@SETTINGS
@given(matrices(max_rows=10, max_cols=9), alphas, gammas)
def test_greedy_reference_is_the_specified_greedy(w, alpha, gamma):
    p = greedy_combine_reference(w, alpha, gamma)
    assert set(p.blocks[0][2]) == naive_greedy_groups(w, alpha, gamma)


@SETTINGS
@given(matrices(max_rows=12, max_cols=14), alphas, gammas, row_blocks)
def test_never_more_groups_than_greedy_on_tiny_matrices(w, alpha, gamma, row_block):
    ours = combine_columns(w, alpha, gamma, row_block)
    assert ours.groups_total <= greedy_combine_reference(w, alpha, gamma, row_block).groups_total


def test_tiny_block_where_filling_alone_loses_to_greedy():
    """Filling + repair needs 3 groups here, the greedy merge 2; tiny blocks fall back to it."""
    w = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 1, 1], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0]], dtype=float)
    assert greedy_combine_reference(w, 8, 0.25).groups_total == 2
    assert combine_columns(w, 8, 0.25).groups_total == 2


@pytest.mark.parametrize("seed", range(40))
def test_never_more_groups_than_greedy(seed):
    """Small random matrices, mostly with more than 32 nonzero columns, where no greedy fallback runs."""
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(4, 60)), int(rng.integers(20, 70))
    w = random_sparse(rng, rows, cols, rng.uniform(0.03, 0.6))
    alpha, gamma = int(rng.integers(2, 9)), float(rng.choice([0.0, 0.1, 0.25, 0.5, 1.0]))
    row_block = [None, None, 8, 16][seed % 4]
    ours = combine_columns(w, alpha, gamma, row_block)
    theirs = greedy_combine_reference(w, alpha, gamma, row_block)
    assert ours.groups_total <= theirs.groups_total


def test_much_fewer_groups_than_greedy_at_80_percent_sparsity():
    """The benchmark setting in small: greedy stalls near n/4 groups, filling reaches about n/6."""
    rng = np.random.default_rng(0)
    w = random_sparse(rng, 400, 120, 0.2)
    ours = combine_columns(w, 8, 0.5).groups_total
    theirs = greedy_combine_reference(w, 8, 0.5).groups_total
    assert ours <= 21 and theirs >= 28, (ours, theirs)


# ---------------------------------------------------------------- serialisation


@SETTINGS
@given(matrices(), alphas, gammas, row_blocks)
def test_to_dict_round_trips_through_json_and_torch(w, alpha, gamma, row_block):
    p = combine_columns(w, alpha, gamma, row_block)
    d = json.loads(json.dumps(p.to_dict()))
    assert Packing.from_dict(d) == p
    buf = io.BytesIO()
    torch.save({"packing": p.to_dict()}, buf)
    buf.seek(0)
    assert Packing.from_dict(torch.load(buf, weights_only=True)["packing"]) == p


def test_packing_is_frozen():
    p = combine_columns(np.eye(3), 2)
    with pytest.raises(AttributeError):
        p.alpha = 4
    with pytest.raises(ValueError):
        p.mask[0, 0] = False
    with pytest.raises(ValueError, match="format"):
        Packing.from_dict({**p.to_dict(), "format": "other"})


# ---------------------------------------------------------------- check_packing catches violations


def sample():
    w = np.array([[3.0, -5.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 4.0], [0.0, 0.0, 1.0]])
    p = combine_columns(w, 2, gamma=0.5, row_block=2)  # one conflict per block allowed
    assert p.blocks == ((0, 2, ((0, 1),)), (2, 4, ((1, 2),)))
    return w, p


def tamper(p: Packing, **changes) -> Packing:
    d = dict(shape=p.shape, alpha=p.alpha, gamma=p.gamma, row_block=p.row_block, blocks=p.blocks, mask=p.mask)
    return Packing(**{**d, **changes})


def test_check_packing_accepts_and_names_violations():
    w, p = sample()
    check_packing(w * p.mask, p)
    with pytest.raises(ValueError, match="not in packing.mask"):
        check_packing(w, p)  # combine-pruning not applied: row 0 keeps both 3 and -5
    two = p.mask.copy()
    two[0, 0] = True
    with pytest.raises(ValueError, match="at most one per row"):
        check_packing(w * two, tamper(p, mask=two))
    (a, b, groups), rest = p.blocks[0], p.blocks[1:]
    with pytest.raises(ValueError, match="in no group"):
        check_packing(w * p.mask, tamper(p, blocks=((a, b, groups[1:]),) + rest))
    with pytest.raises(ValueError, match="more than one group"):
        check_packing(w * p.mask, tamper(p, blocks=((a, b, groups + groups),) + rest))
    with pytest.raises(ValueError, match="alpha"):
        check_packing(w * p.mask, tamper(p, alpha=1))
    with pytest.raises(ValueError, match="row_block"):
        check_packing(w * p.mask, tamper(p, row_block=3))
    with pytest.raises(ValueError, match="shape"):
        check_packing(np.zeros((4, 4)), p)


def test_check_packing_allows_weights_that_became_zero():
    w, p = sample()
    later = w * p.mask
    later[:, 1] = 0.0  # magnitude pruning after combining emptied a grouped column
    check_packing(later, p)


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(alpha=0), "alpha"),
        (dict(alpha=-2), "alpha"),
        (dict(alpha=2.5), "alpha"),
        (dict(alpha=True), "alpha"),
        (dict(alpha=2, gamma=-0.1), "gamma"),
        (dict(alpha=2, gamma=float("nan")), "gamma"),
        (dict(alpha=2, row_block=0), "row_block"),
        (dict(alpha=2, row_block=1.5), "row_block"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        combine_columns(np.eye(4), **kwargs)


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((2, 2, 2)), np.array([[1.0, np.nan]]),
                                 np.array([[np.inf, 0.0]]), np.array([["a", "b"]])])
def test_bad_weights(bad):
    with pytest.raises(ValueError, match="weight"):
        combine_columns(bad, 2)


# ---------------------------------------------------------------- adapters


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6))
def test_lstm_matrix_interleaves_gates_and_round_trips(hidden, inputs):
    rng = np.random.default_rng(hidden * 10 + inputs)
    wi, wh = rng.standard_normal((4 * hidden, inputs)), rng.standard_normal((4 * hidden, hidden))
    m = lstm_matrix(wi, wh)
    assert m.shape == (4 * hidden, inputs + hidden)
    for j in range(hidden):
        for k in range(4):  # PyTorch gate order i, f, g, o: rows k*H + j
            assert np.array_equal(m[4 * j + k], np.concatenate([wi[k * hidden + j], wh[k * hidden + j]]))
    back_i, back_h = lstm_unmatrix(m, inputs)
    assert np.array_equal(back_i, wi) and np.array_equal(back_h, wh)
    mi, mh = lstm_unmatrix(m > 0, inputs)  # masks go back the same way
    assert mi.dtype == bool and np.array_equal(mi, wi > 0) and np.array_equal(mh, wh > 0)


def test_lstm_matrix_from_torch_and_bad_shapes():
    lstm = torch.nn.LSTM(3, 5)
    m = lstm_matrix(lstm.weight_ih_l0, lstm.weight_hh_l0)
    assert m.shape == (20, 8) and m.dtype == np.float32
    with pytest.raises(ValueError):
        lstm_matrix(np.zeros((20, 3)), np.zeros((20, 4)))
    with pytest.raises(ValueError):
        lstm_unmatrix(np.zeros((20, 8)), input_size=4)


def test_conv2d_and_linear_adapters():
    conv = torch.nn.Conv2d(3, 6, kernel_size=(2, 3))
    m = conv2d_matrix(conv.weight)
    assert m.shape == (6, 18)
    assert np.array_equal(conv2d_unmatrix(m, conv.weight.shape), conv.weight.detach().numpy())
    assert np.array_equal(conv2d_unmatrix(m != 0, (6, 3, 2, 3)), conv.weight.detach().numpy() != 0)
    lin = torch.nn.Linear(4, 7)
    assert np.array_equal(linear_matrix(lin.weight), lin.weight.detach().numpy())
    with pytest.raises(ValueError):
        conv2d_matrix(np.zeros((2, 2)))


# ---------------------------------------------------------------- the bank rule

bank_alphas = st.sampled_from([1, 3, 5, 8])
bank_gammas = st.sampled_from([0.0, 0.5, 1.75])
bank_row_blocks = st.sampled_from([None, 16])


@st.composite
def banked_cases(draw, max_rows=40, max_cols=24):
    """(w, alpha, gamma, row_block, banks); banks address mod alpha half the time, else arbitrary."""
    w = draw(matrices(max_rows, max_cols))
    alpha = draw(bank_alphas)
    cols = w.shape[1]
    if draw(st.booleans()):
        banks = np.arange(cols) % alpha
    else:
        banks = np.array(draw(st.lists(st.integers(0, alpha - 1), min_size=cols, max_size=cols)), dtype=np.int64)
    return w, alpha, draw(bank_gammas), draw(bank_row_blocks), banks


def assert_bank_rule(p: Packing, banks) -> None:
    """Recomputed from the definition: the columns of every group are in pairwise distinct banks."""
    for a, b, groups in p.blocks:
        for g in groups:
            assert len({int(banks[c]) for c in g}) == len(g), (a, b, g, [int(banks[c]) for c in g])


def assert_pruning_kept_at_most_one(w: np.ndarray, p: Packing) -> None:
    assert not (p.mask & (w == 0)).any()
    for a, b, groups in p.blocks:
        for g in groups:
            assert (p.mask[a:b][:, list(g)].sum(axis=1) <= 1).all(), g


@SETTINGS
@given(banked_cases())
def test_bank_rule_holds_with_every_invariant(case):
    w, alpha, gamma, row_block, banks = case
    p = combine_columns(w, alpha, gamma, row_block, banks=banks)
    assert_valid(w, p, alpha, gamma, row_block)  # budgets, mask semantics, lossless at gamma 0
    assert_bank_rule(p, banks)
    check_packing(w * p.mask, p, banks)
    assert combine_columns(w, alpha, gamma, row_block, banks=torch.from_numpy(banks)) == p
    assert combine_columns(w, alpha, gamma, row_block, banks=banks.tolist()) == p


@SETTINGS
@given(banked_cases(max_rows=20, max_cols=30))
def test_bank_rule_in_filling_and_repair_alone(case):
    """Below 33 columns the greedy merge may replace the result, so check fill and repair directly."""
    from ccflow.combine import _bank_bits, _block_bounds, _budget, _dissolve, _fill, _pack_blocks

    w, alpha, gamma, row_block, banks = case
    bounds = _block_bounds(w.shape[0], row_block)
    bits, counts = _pack_blocks(w != 0, bounds)
    budgets = np.array([_budget(gamma, b - a, alpha) for a, b in bounds], dtype=np.int64)
    bankbits = _bank_bits(banks, alpha)
    filled = _fill(bits, counts, budgets, alpha, bankbits)
    repaired = _dissolve(bits, counts, budgets, alpha, filled.copy(), bankbits)
    for gid in (filled, repaired):
        for blk, (a, b) in enumerate(bounds):
            assert np.array_equal(gid[blk] >= 0, counts[blk] > 0)
            for g in np.unique(gid[blk][gid[blk] >= 0]):
                members = np.flatnonzero(gid[blk] == g)
                assert len(set(banks[members].tolist())) == len(members) <= alpha
                assert group_conflicts(w[a:b], members) <= budgets[blk]


@pytest.mark.parametrize("seed", range(16))
def test_bank_rule_on_larger_matrices(seed):
    """More than 32 columns per block (no greedy fallback), so filling and repair decide."""
    rng = np.random.default_rng(500 + seed)
    rows, cols = int(rng.integers(20, 120)), int(rng.integers(40, 160))
    w = random_sparse(rng, rows, cols, rng.uniform(0.02, 0.4))
    alpha, gamma = [1, 3, 5, 8][seed % 4], [0.0, 0.5, 1.75][seed % 3]
    row_block = [None, 16][seed // 8]
    banks = np.arange(cols) % alpha if seed % 2 else rng.integers(0, alpha, cols)
    p = combine_columns(w, alpha, gamma, row_block, banks=banks)
    assert_valid(w, p, alpha, gamma, row_block)
    assert_bank_rule(p, banks)
    check_packing(w * p.mask, p, banks)


@pytest.mark.parametrize("alpha", [9, 16, 17, 40, 64, 65, 130])  # uint16, uint32, uint64, several words
def test_bank_rule_with_wide_bank_masks(alpha):
    rng = np.random.default_rng(alpha)
    cols = max(40, 3 * alpha)  # over 32 nonzero columns: filling and repair decide, not the greedy merge
    w = random_sparse(rng, 30, cols, 0.05)
    for banks in (np.arange(cols) % alpha, rng.integers(0, alpha, cols)):
        for row_block in (None, 15):
            p = combine_columns(w, alpha, 1.0, row_block, banks=banks)
            assert_valid(w, p, alpha, 1.0, row_block)
            assert_bank_rule(p, banks)
            assert_bank_rule(split_banks(combine_columns(w, alpha, 1.0, row_block), banks), banks)


def test_bank_rule_known_answers():
    w = np.eye(12)  # conflict-free in any grouping: only alpha and the banks limit a group
    assert combine_columns(w, 4, banks=np.zeros(12, dtype=int)).groups_total == 12  # one bank: singletons
    p = combine_columns(w, 4, banks=np.arange(12) // 3)  # banks 0,0,0,1,1,1,...: one of each per group
    assert p.groups_total == 3 and all(len(g) == 4 for g in p.blocks[0][2])
    assert_bank_rule(p, np.arange(12) // 3)
    assert combine_columns(w, 1, banks=np.zeros(12, dtype=int)) == combine_columns(w, 1)


@SETTINGS
@given(matrices(max_cols=8), st.integers(1, 8), gammas, row_blocks)
def test_distinct_banks_are_no_rule(w, alpha, gamma, row_block):
    """At most alpha columns, all in different banks: the rule constrains nothing, same packing."""
    cols = w.shape[1]
    if cols > alpha:
        w = w[:, :alpha]
    banks = np.arange(w.shape[1])[::-1].copy()
    assert combine_columns(w, alpha, gamma, row_block, banks=banks) == combine_columns(w, alpha, gamma, row_block)


def test_repair_respects_the_bank_rule():
    """As in the repair test above, column 3 fits into {0, 1} by conflicts, but bank 0 is taken there."""
    from ccflow.combine import _bank_bits, _dissolve, _pack_blocks

    nz = np.zeros((40, 4), dtype=bool)
    nz[0, 0] = nz[39, 1] = nz[0, 2] = nz[20, 2] = nz[20, 3] = True
    bits, counts = _pack_blocks(nz, [(0, 40)])
    gid = np.array([[0, 0, 1, 2]])
    free = _dissolve(bits, counts, np.array([0]), 3, gid.copy(), _bank_bits(np.array([0, 1, 2, 2]), 3))[0]
    assert free[0] == free[1] == free[3] != free[2]
    taken = _dissolve(bits, counts, np.array([0]), 3, gid.copy(), _bank_bits(np.array([0, 1, 2, 0]), 3))[0]
    assert len(set(taken.tolist())) == 3 and taken[0] == taken[1]


@SETTINGS
@given(matrices(max_rows=10, max_cols=9), st.integers(1, 8), gammas, st.data())
def test_greedy_reference_with_banks_is_the_specified_greedy(w, alpha, gamma, data):
    banks = np.array(data.draw(st.lists(st.integers(0, alpha - 1), min_size=w.shape[1], max_size=w.shape[1])),
                     dtype=np.int64)
    p = greedy_combine_reference(w, alpha, gamma, banks=banks)
    assert set(p.blocks[0][2]) == naive_greedy_groups(w, alpha, gamma, banks)
    ours = combine_columns(w, alpha, gamma, banks=banks)
    assert ours.groups_total <= p.groups_total  # tiny blocks: the banked greedy merge is the fallback


# ---------------------------------------------------------------- split_banks


@SETTINGS
@given(banked_cases())
def test_split_banks_is_lossless_and_obeys_the_rule(case):
    w, alpha, gamma, row_block, banks = case
    p = combine_columns(w, alpha, gamma, row_block)  # made without the rule
    s = split_banks(p, banks)
    assert np.array_equal(s.mask, p.mask), "splitting must not drop a weight"
    assert (s.shape, s.alpha, s.gamma, s.row_block) == (p.shape, p.alpha, p.gamma, p.row_block)
    assert_bank_rule(s, banks)
    assert_pruning_kept_at_most_one(w, s)
    check_packing(w * s.mask, s, banks)
    for (a, b, old), (a2, b2, new) in zip(p.blocks, s.blocks, strict=True):
        assert (a, b) == (a2, b2)
        assert [g[0] for g in new] == sorted(g[0] for g in new), "groups ordered by lowest column"
        for g in old:  # each group becomes exactly the fewest subgroups: its most crowded bank's count
            parts = [h for h in new if set(h) <= set(g)]
            assert sorted(c for h in parts for c in h) == list(g)
            assert len(parts) == max(np.bincount(banks[list(g)]))
            assert all(budget_ok for budget_ok in
                       (group_conflicts(w[a:b], h) <= group_conflicts(w[a:b], g) for h in parts))
    assert split_banks(s, banks) == s


@SETTINGS
@given(banked_cases())
def test_split_banks_is_the_identity_on_a_banked_packing(case):
    w, alpha, gamma, row_block, banks = case
    p = combine_columns(w, alpha, gamma, row_block, banks=banks)
    assert split_banks(p, banks) == p


def test_split_banks_known_answer():
    w = np.eye(6)
    p = combine_columns(w, 6)
    assert p.blocks[0][2] == ((0, 1, 2, 3, 4, 5),)
    s = split_banks(p, [0, 1, 0, 0, 2, 1])  # greedy, ascending: 0 1 | 2 5 | 3 4 ... first fit per bank
    assert s.blocks[0][2] == ((0, 1, 4), (2, 5), (3,))
    assert np.array_equal(s.mask, p.mask)


# ---------------------------------------------------------------- bank arguments and check_packing


def test_check_packing_names_the_bank_clash():
    w, p = sample()  # blocks ((0, 1),) on rows 0:2 and ((1, 2),) on rows 2:4
    check_packing(w * p.mask, p, banks=[0, 1, 0])
    with pytest.raises(ValueError, match=r"rows 0:2: group 0 \(0, 1\) has columns 0 and 1 both in bank 1"):
        check_packing(w * p.mask, p, banks=[1, 1, 0])
    with pytest.raises(ValueError, match=r"rows 2:4: group 0 \(1, 2\) has columns 1 and 2 both in bank 0"):
        check_packing(w * p.mask, p, banks=np.array([1, 0, 0]))
    s = split_banks(p, [1, 1, 0])
    assert s.blocks == ((0, 2, ((0,), (1,))), (2, 4, ((1, 2),)))
    check_packing(w * s.mask, s, banks=[1, 1, 0])


@pytest.mark.parametrize(
    "banks, match",
    [
        ([0, 1, 2], "shape"),  # one short
        ([0, 1, 2, 3, 0], "shape"),  # one too many
        (np.zeros((2, 2), dtype=int), "shape"),
        ([0, 1, 2, 4], r"banks\[3\] = 4 is outside 0..3"),
        ([0, -1, 2, 3], r"banks\[1\] = -1"),
        ([0.0, 1.0, 2.0, 3.0], "integers"),
        ([0, 1.5, 2, 3], "integers"),
        (np.array([True, False, True, False]), "integers"),
        (["a", "b", "c", "d"], "integers"),
    ],
)
def test_bad_banks(banks, match):
    w = np.eye(4)
    with pytest.raises(ValueError, match=match):
        combine_columns(w, 4, banks=banks)
    with pytest.raises(ValueError, match=match):
        greedy_combine_reference(w, 4, banks=banks)
    p = combine_columns(w, 4)
    with pytest.raises(ValueError, match=match):
        check_packing(w, p, banks=banks)
    with pytest.raises(ValueError, match=match):
        split_banks(p, banks)


def test_bad_banks_messages_are_one_line_and_name_the_fix():
    for banks in ([0, 1], [0, 1, 2, 9], [0.5, 1, 2, 3]):
        with pytest.raises(ValueError) as err:
            combine_columns(np.eye(4), 4, banks=banks)
        assert "\n" not in str(err.value) and ("mod alpha" in str(err.value) or "astype" in str(err.value))


# ---------------------------------------------------------------- what the rule costs


def test_bank_rule_costs_few_groups_and_beats_splitting():
    """80%-sparse 256x512, alpha 8, gamma 0.5, banks = address mod 8 (docs/combining.md, "Bank rule").

    Measured: 233 groups without the rule, 239 with it (+2.6%), 533 for split_banks of the former.
    """
    banks = np.arange(512) % 8
    plain = banked = split = 0
    for seed in range(3):
        w = random_sparse(np.random.default_rng(900 + seed), 256, 512, 0.2)
        p = combine_columns(w, 8, 0.5)
        b = combine_columns(w, 8, 0.5, banks=banks)
        plain += p.groups_total
        banked += b.groups_total
        split += split_banks(p, banks).groups_total
        assert b.groups_total <= 1.15 * p.groups_total, (b.groups_total, p.groups_total)
    assert banked <= 1.15 * plain and split >= 1.5 * banked, (plain, banked, split)
