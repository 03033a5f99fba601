"""The quantizer and the integer golden model against float arithmetic and against themselves."""

import numpy as np
import pytest

from ccflow.arrayconfig import ArrayConfig, NumberFormats
from ccflow.combine import combine_columns, lstm_matrix
from ccflow.design import Design
from ccflow.fixedpoint import round_shift
from ccflow.golden import GoldenModel, batchify, fixed_point_bpc
from ccflow.quantize import FloatLSTM, FloatModel, QuantizeError, quantize


def random_model(rng, **kw):
    return FloatModel.random(seed=int(rng.integers(1 << 30)), **kw)


def float_logits(model: FloatModel, tokens):
    """Plain float LSTM (PyTorch gate order), one token at a time."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    h = [np.zeros(l.hidden) for l in model.layers]
    c = [np.zeros(l.hidden) for l in model.layers]
    out = []
    for t in tokens:
        x = model.embedding[t]
        for k, l in enumerate(model.layers):
            gi, gf, gg, go = np.split(l.w_ih @ x + l.w_hh @ h[k] + l.bias, 4)
            c[k] = sig(gf) * c[k] + sig(gi) * np.tanh(gg)
            h[k] = sig(go) * np.tanh(c[k])
            x = h[k]
        out.append(model.embedding @ x + model.decoder_bias)
    return np.array(out)


def unpack(design: Design, name: str) -> np.ndarray:
    """Rebuild the int weight matrix of one matrix from its tiles (act-address columns)."""
    m = next(m for m in design.matrices if m.name == name)
    rows = design.array.rows
    out = np.zeros((m.n_blocks * rows, m.in_size), dtype=np.int64)
    column = {int(a): j for j, a in enumerate(m.column_addresses())}
    for t in range(m.tile_start, m.tile_start + m.n_tiles):
        for r in range(rows):
            for c in range(design.array.cols):
                w = design.tile_weight[t, r, c]
                b = design.tile_block[t] - m.block_start + (c >= design.tile_split[t])
                if w:
                    col = column[int(design.tile_addr[t, c, design.tile_sel[t, r, c]])]
                    assert out[b * rows + r, col] == 0, "a weight is placed twice"
                    out[b * rows + r, col] = w
    return out[: m.rows]


@pytest.mark.parametrize("rows,cols,alpha,gamma", [(4, 2, 2, 0.0), (8, 3, 4, 0.5), (16, 8, 8, 1.0)])
def test_tiles_hold_exactly_the_combined_weights(rows, cols, alpha, gamma):
    rng = np.random.default_rng(rows * 100 + cols)
    model = random_model(rng, hidden=(12, 16))
    array = ArrayConfig(rows=rows, cols=cols, alpha=alpha)
    original = model
    model, packings = model.combined(alpha, gamma, row_block=rows)
    design = quantize(model, array, packings)
    for k, l in enumerate(original.layers):
        np.testing.assert_array_equal(lstm_matrix(model.layers[k].w_ih, model.layers[k].w_hh),
                                      np.where(packings[k].mask, lstm_matrix(l.w_ih, l.w_hh), 0.0))
    for k, l in enumerate(model.layers):
        expected_nz = packings[k].mask & (lstm_matrix(l.w_ih, l.w_hh) != 0)
        got = unpack(design, f"lstm{k}")
        # every kept weight is placed where it belongs; rounding to 0 is the only loss
        assert np.all((got != 0) <= expected_nz)
        assert np.count_nonzero(got) >= 0.9 * expected_nz.sum()
        m = design.matrices[k]
        assert m.packed_cells <= packings[k].packed_cells
        assert m.n_tiles <= sum(max(1, -(-len(grp) // cols)) for _, _, grp in packings[k].blocks)


@pytest.mark.parametrize("rows,cols,sparsity", [(4, 3, 0.3), (8, 4, 0.6), (8, 8, 0.9), (16, 8, 0.75)])
def test_tiles_deal_blocks_without_waste(rows, cols, sparsity):
    rng = np.random.default_rng(cols)
    model = random_model(rng, hidden=(16, 24), sparsity=sparsity)
    design = quantize(model, ArrayConfig(rows=rows, cols=cols, alpha=4))
    for m in design.matrices:
        t = slice(m.tile_start, m.tile_start + m.n_tiles)
        block, first, last, split = (design.tile_block[t], design.tile_first[t], design.tile_last[t],
                                     design.tile_split[t])
        local = block - m.block_start
        # every block starts once and ends once, in order; a tile with a block B ends its block A
        starts = np.concatenate([local[first], local[split < cols] + 1])
        assert sorted(starts) == list(range(m.n_blocks))
        assert local[last].tolist() == list(range(m.n_blocks))
        assert np.all(last[split < cols])
        # B goes on in the next tile: never a second block end in one tile
        nxt = np.flatnonzero(split < cols) + 1
        assert np.all(nxt < m.n_tiles) and np.all(~first[nxt]) and np.all(local[nxt] == local[nxt - 1] + 1)
        # no waste beyond one partial tile per block that could not share
        columns = np.count_nonzero(np.any(design.tile_weight[t] != 0, axis=1))
        assert m.n_tiles <= columns // cols + m.n_blocks


def test_shared_tiles_beat_whole_tiles_per_block():
    rng = np.random.default_rng(0)
    model = random_model(rng, vocab=96, emsize=32, hidden=(64, 64), sparsity=0.75, scale=0.3)
    array = ArrayConfig(rows=16, cols=8, alpha=8)
    model, packings = model.combined(8, 0.5, row_block=16)
    design = quantize(model, array, packings)
    whole = sum(-(-len(g) // 8) for p in packings.values() for _, _, g in p.blocks)
    lstm_tiles = sum(m.n_tiles for m in design.lstm_layers)
    assert lstm_tiles < 0.95 * whole
    lstm_cells = sum(m.packed_cells for m in design.lstm_layers)
    assert lstm_tiles <= lstm_cells / array.cells + len(design.lstm_layers)


def test_golden_tracks_the_float_model():
    rng = np.random.default_rng(7)
    model = random_model(rng)
    design = quantize(model, ArrayConfig(rows=8, cols=4, alpha=4))
    tokens = rng.integers(0, 13, 40)
    ref = float_logits(model, tokens)
    got = GoldenModel(design).run(tokens) * 2.0 ** -design.array.formats.logit_frac
    assert np.abs(got - ref).max() < 0.05, np.abs(got - ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.9


def test_batched_streams_equal_single_streams():
    rng = np.random.default_rng(3)
    design = quantize(random_model(rng), ArrayConfig(rows=8, cols=4, alpha=4))
    tokens = rng.integers(0, 13, (12, 3))
    batched = GoldenModel(design, batch=3)
    got = np.stack([batched.step(t) for t in tokens])  # [T, 3, V]
    for s in range(3):
        np.testing.assert_array_equal(got[:, s], GoldenModel(design).run(tokens[:, s]))


def test_accumulator_saturation_is_counted_and_matches_the_slow_path():
    rng = np.random.default_rng(5)
    fmt = NumberFormats(acc_bits=24)  # small accumulator
    model = random_model(rng, hidden=(40, 40), sparsity=0.0)
    # all-positive weights and inputs: every running sum grows past 2**23
    model = FloatModel(tuple(FloatLSTM(np.abs(l.w_ih), np.abs(l.w_hh), l.bias) for l in model.layers),
                       np.abs(model.embedding) + 4.0, model.decoder_bias)
    design = quantize(model, ArrayConfig(rows=8, cols=2, alpha=2, formats=fmt))
    g = GoldenModel(design)
    g.run(rng.integers(0, 13, 20))
    assert g.sat.by_site.get("accumulator", 0) > 0
    # the vectorised fast path and the tile-by-tile loop agree when nothing saturates
    small = quantize(random_model(rng), ArrayConfig(rows=8, cols=2, alpha=2))
    fast = GoldenModel(small)
    slow = GoldenModel(small)
    slow._acc_lo, slow._acc_hi = 1, 0  # forces the saturating loop
    for t in rng.integers(0, 13, 10):
        fast.step([t])
        slow_logits = slow.step([t])
    np.testing.assert_array_equal(fast.act, slow.act)
    np.testing.assert_array_equal(fast.cell, slow.cell)
    assert slow_logits.shape == (1, 13)


@pytest.mark.parametrize("rows,cols,alpha,gamma", [(4, 3, 2, 0.0), (8, 5, 4, 1.0), (16, 8, 8, 0.5)])
def test_matrix_product_shortcut_equals_the_tile_replay(rows, cols, alpha, gamma):
    rng = np.random.default_rng(rows + cols)
    model, packings = random_model(rng, vocab=21, hidden=(20, 12), sparsity=0.5).combined(alpha, gamma, rows)
    design = quantize(model, ArrayConfig(rows=rows, cols=cols, alpha=alpha), packings)
    fast, tiles = GoldenModel(design, batch=2, trace=True), GoldenModel(design, batch=2, trace=True)
    assert fast.array._dense
    tiles.array._dense = {}  # replay every tile
    for t in rng.integers(0, 21, (15, 2)):
        np.testing.assert_array_equal(fast.step(t), tiles.step(t))
        for a, b in zip(fast.trace, tiles.trace, strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast.cell, tiles.cell)


def test_round_shift_rounds_half_up():
    x = np.array([-6, -5, -3, -2, 2, 3, 5, 6])
    np.testing.assert_array_equal(round_shift(x, 1), [-3, -2, -1, -1, 1, 2, 3, 3])
    np.testing.assert_array_equal(round_shift(x, 0), x)


def test_fixed_point_bpc_is_close_to_uniform_for_a_random_model():
    rng = np.random.default_rng(11)
    design = quantize(random_model(rng, scale=0.05), ArrayConfig(rows=8, cols=4, alpha=4))
    bpc = fixed_point_bpc(design, rng.integers(0, 13, 400), streams=4)
    assert abs(bpc - np.log2(13)) < 0.2


def test_design_round_trips_through_disk(tmp_path):
    rng = np.random.default_rng(2)
    design = quantize(random_model(rng), ArrayConfig(rows=8, cols=4, alpha=4))
    design.save(tmp_path)
    again = Design.load(tmp_path)
    assert again.matrices == design.matrices and again.array == design.array
    tokens = rng.integers(0, 13, 8)
    np.testing.assert_array_equal(GoldenModel(again).run(tokens), GoldenModel(design).run(tokens))


def test_weights_outside_the_packing_are_refused():
    """The masks-not-applied bug: a packing from combining, weights that were never combine-pruned."""
    rng = np.random.default_rng(8)
    model = random_model(rng, sparsity=0.3)
    _, packings = model.combined(4, 1.0, row_block=8)
    with pytest.raises(QuantizeError, match="not in packing.mask"):
        quantize(model, ArrayConfig(rows=8, cols=4, alpha=4), packings)


def test_packing_with_the_wrong_alpha_is_refused():
    rng = np.random.default_rng(4)
    model = random_model(rng)
    l = model.layers[0]
    wide = combine_columns(lstm_matrix(l.w_ih, l.w_hh), 8, 0.0, row_block=8)
    with pytest.raises(QuantizeError, match="alpha"):
        quantize(model, ArrayConfig(rows=8, cols=4, alpha=4), {0: wide})


def test_batchify_drops_the_remainder():
    cols = batchify(np.arange(10), 3)
    assert cols.shape == (3, 3) and cols[:, 1].tolist() == [3, 4, 5]


def test_weight_sections_nest_and_each_takes_its_largest_exponent():
    """Finer sections never get a smaller exponent; within a section the largest that fits is used."""
    from ccflow.arrayconfig import WEIGHT_SECTIONS
    from ccflow.quantize import row_exponents, section_exponent

    rng = np.random.default_rng(5)
    model = random_model(rng, hidden=(12, 20), scale=0.8)
    model.layers[1].w_hh[5] *= 9.0  # one large row: coarse sections lose precision for everything else
    mats = [np.concatenate([l.w_ih, l.w_hh], 1).reshape(4, l.hidden, -1).transpose(1, 0, 2).reshape(4 * l.hidden, -1)
            for l in model.layers] + [model.embedding]
    biases = [l.bias.reshape(4, l.hidden).T.reshape(-1) for l in model.layers] + [model.decoder_bias]
    fracs = [12] * len(model.layers) + [8]
    gates = [4] * len(model.layers) + [1]
    e = {}
    for s in WEIGHT_SECTIONS:
        array = ArrayConfig(rows=8, cols=4, alpha=4, formats=NumberFormats(weight_section=s))
        e[s] = row_exponents(mats, biases, fracs, gates, array)
    for coarse, fine in zip(WEIGHT_SECTIONS, WEIGHT_SECTIONS[1:]):
        assert all((f >= c).all() for c, f in zip(e[coarse], e[fine])), (coarse, fine)
    array = ArrayConfig(rows=8, cols=4, alpha=4)
    for m, b, f, er in zip(mats, biases, fracs, e["row"]):
        for r in range(m.shape[0]):
            assert er[r] == section_exponent(np.abs(m[r]).max(), abs(b[r]), array, f)
    assert len(set(np.concatenate(e["model"][:-1]).tolist())) == 1  # one exponent per output format
    assert e["row"][1].max() > e["model"][1].max()  # the large row no longer sets everyone's scale
    # every section quantizes to the same design shape; only weights, biases and shifts differ
    designs = {s: quantize(model, ArrayConfig(rows=8, cols=4, alpha=4, formats=NumberFormats(weight_section=s)))
               for s in WEIGHT_SECTIONS}
    assert len({d.tile_weight.shape for d in designs.values()}) == 1
    assert not np.array_equal(designs["row"].block_shift, designs["model"].block_shift)


def test_an_unknown_weight_section_is_refused():
    from ccflow.arrayconfig import ConfigError

    with pytest.raises(ConfigError, match="weight_section='tensor' must be one of model, matrix"):
        NumberFormats(weight_section="tensor")
