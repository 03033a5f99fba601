"""The cocotb benches on Icarus and Verilator: MX cell, array, pointwise unit, and the whole top over
real text -- bit-exact with the golden model, with handshake stalls and a reset mid-run -- and a
corrupted weight ROM that must make the top bench fail.

Builds are cached per design in one work folder for the session (Verilator builds take the time;
see ccflow.simulate). Deselect with ``-m "not sim"``.
"""

import dataclasses

import numpy as np
import pytest

from ccflow.arrayconfig import ArrayConfig, NumberFormats
from ccflow.corpus import load_corpus
from ccflow.generate import render_rtl, rtl_context, tile_rom_shape, token_interval
from ccflow.golden import GoldenModel
from ccflow.quantize import FloatLSTM, FloatModel, activation_luts, quantize
from ccflow.simulate import run_top, run_unit

pytestmark = pytest.mark.sim
SIMS = ["icarus", "verilator"]


@pytest.fixture(scope="session")
def sim_work(tmp_path_factory):
    return tmp_path_factory.mktemp("sim-work")


@pytest.fixture(scope="session")
def text():
    """Real text: the test split of the built-in corpus (96 symbols)."""
    corpus = load_corpus("builtin")
    assert corpus.ntokens == 96
    return [int(t) for t in corpus.test]


def _render(tmp_path_factory, name, design):
    out = tmp_path_factory.mktemp(name)
    render_rtl(design, out)
    return out


# --- the MX cell ---------------------------------------------------------------


@pytest.fixture(scope="session", params=[1, 3, 8, 16], ids=lambda a: f"alpha{a}")
def cell_rtl(request, tmp_path_factory):
    array = ArrayConfig(rows=4, cols=2, alpha=request.param)
    return _render(tmp_path_factory, f"cell-{request.param}", quantize(FloatModel.random(seed=1), array))


@pytest.mark.parametrize("sim", SIMS)
def test_mx_cell(sim, cell_rtl, sim_work):
    run = run_unit(cell_rtl, "mx_cell", sim=sim, work_dir=sim_work, vectors=1500)
    assert run.passed, f"{run.message} (log {run.log_path})"
    assert run.results["vectors"] >= 1500


def test_unit_benches_find_prefixed_modules(tmp_path_factory, sim_work):
    array = ArrayConfig(rows=4, cols=2, alpha=4, module_prefix="lm0_")
    rtl = _render(tmp_path_factory, "cell-prefixed", quantize(FloatModel.random(seed=1), array))
    run = run_unit(rtl, "mx_cell", sim="icarus", work_dir=sim_work, vectors=200)
    assert run.passed and run.toplevel == "lm0_mx_cell", f"{run.message} (log {run.log_path})"


# --- the array against packed random matrices ------------------------------------

ARRAYS = [(4, 2, 2), (8, 4, 4), (16, 8, 8)]


@pytest.fixture(scope="session", params=ARRAYS, ids=lambda a: "x".join(map(str, a)))
def array_rtl(request, tmp_path_factory):
    rows, cols, alpha = request.param
    array = ArrayConfig(rows=rows, cols=cols, alpha=alpha)
    return array, _render(tmp_path_factory, f"array-{rows}x{cols}", quantize(FloatModel.random(seed=2), array))


@pytest.mark.parametrize("sim", SIMS)
def test_array_computes_the_packed_matrix(sim, array_rtl, sim_work):
    array, rtl = array_rtl
    r = array.rows
    cases = []
    for alpha in sorted({1, 2, array.alpha}):
        for gamma in (0.0, 0.5, 1.75):
            cases.append(dict(shape=[3 * r + 1, 40], alpha=alpha, gamma=gamma, sparsity=0.8))
    cases += [dict(shape=[2 * r, 17], alpha=array.alpha, gamma=0.5, sparsity=0.5),
              dict(shape=[5, 64], alpha=array.alpha, gamma=1.75, sparsity=0.9),
              dict(shape=[r, 3], alpha=array.alpha, gamma=0.0, sparsity=0.0)]
    run = run_unit(rtl, "array", sim=sim, work_dir=sim_work, cases=cases)
    assert run.passed, f"{run.message} (log {run.log_path})"
    assert len(run.results["cases"]) == len(cases) and run.results["tiles"] > 2 * len(cases)


# --- the pointwise unit ------------------------------------------------------------


@pytest.fixture(scope="session", params=[(16, 4, 2), (24, 8, 1), (24, 2, 4)],
                ids=lambda p: f"cell{p[0]}-phases{p[2]}")
def pointwise_rtl(request, tmp_path_factory):
    """Four units per row block in 1, 2 or 4 phases (the array's width sets how far apart blocks
    come: ccflow.generate.pointwise_phases), partial last blocks (hidden 10 and 6), LUTs with some
    out-of-range entries so cell and hidden saturations happen; a narrow (16) and the default (24)
    cell format."""
    cell_bits, cols, phases = request.param
    array = ArrayConfig(rows=16, cols=cols, alpha=4, formats=NumberFormats(cell_bits=cell_bits))
    design = quantize(FloatModel.random(seed=7, vocab=11, emsize=8, hidden=(10, 6)), array)
    assert rtl_context(design)["pw_phases"] == phases
    rng = np.random.default_rng(3)

    def noisy(table):
        table = table.copy()
        pick = rng.random(table.shape) < 0.3
        table[pick] = rng.integers(-(1 << 15), 1 << 15, int(pick.sum()))
        return table

    sig, tanh = activation_luts(array)
    design = dataclasses.replace(design, lut_sigmoid=noisy(sig), lut_tanh=noisy(tanh))
    return cell_bits, _render(tmp_path_factory, f"pointwise-cell{cell_bits}-phases{phases}", design)


@pytest.mark.parametrize("sim", SIMS)
def test_pointwise(sim, pointwise_rtl, sim_work):
    cell_bits, rtl = pointwise_rtl
    run = run_unit(rtl, "pointwise", sim=sim, work_dir=sim_work, steps=6)
    assert run.passed, f"{run.message} (log {run.log_path})"
    assert run.results["layers_checked"] == 6 * 3
    sites = run.results["sat_by_site"]
    assert sites.get("hidden", 0) > 0
    if cell_bits == 16:
        assert sites.get("cell", 0) > 0


# --- the whole top over real text ----------------------------------------------------


@pytest.fixture(scope="session")
def top_design():
    """The shipped default's model shape (vocab 96, emsize 32, 3 layers with nhid 64) on an 8 x 8 array
    (alpha 8; the default's 8 x 4 would take twice the cycles), with random weights at 75% sparsity."""
    model = FloatModel.random(seed=1, vocab=96, emsize=32, hidden=(64, 64), sparsity=0.75)
    return quantize(model, ArrayConfig(8, 8, 8))


@pytest.fixture(scope="session")
def top_rtl(tmp_path_factory, top_design):
    return _render(tmp_path_factory, "top", top_design)


@pytest.mark.parametrize("sim", SIMS)
def test_top_over_real_text(sim, top_rtl, top_design, text, sim_work):
    tokens = text[:64]
    r = run_top(top_rtl, sim=sim, tokens=tokens, work_dir=sim_work)
    assert r.passed, f"{r.message} (log {r.log_path})"
    assert r.tokens_checked == len(tokens)  # the token cut short by the mid-run reset is run again
    # Throughput, no stalls: the controller's schedule (a layer wavefront, one tile per cycle and
    # waits only where a matrix's input is not written yet), replayed by ccflow.schedule.
    assert r.token_interval == token_interval(top_design)
    # latency: a token passes one stage per step, so up to one step per matrix plus the pipeline depth
    assert r.token_interval < r.cycles_per_token < (len(top_design.matrices) + 1) * r.token_interval
    assert r.tiles == top_design.n_tiles and r.ideal_cycles == pytest.approx(top_design.ideal_cycles)


UNUSUAL = {
    # 12-row blocks (3 lanes), alpha 5, 12-bit activations, 40-bit accumulators, lut_shift 0, an
    # exponent per row
    "odd": (dict(vocab=20, emsize=10, hidden=(12, 20)),
            ArrayConfig(12, 3, 5, NumberFormats(act_bits=12, act_frac=8, lut_frac=8, cell_bits=20, acc_bits=40,
                                                weight_section="row"))),
    # one lane, one array column, alpha 1, 4-bit weights, vocabulary smaller than a row block, one
    # exponent per gate
    "narrow": (dict(vocab=3, emsize=6, hidden=(9,)),
               ArrayConfig(4, 1, 1, NumberFormats(weight_bits=4, logit_frac=4, lut_frac=3, weight_section="gate"))),
    # alpha 16 on 2 columns, 10-bit activations and cells, one exponent for the whole model
    "wide-alpha": (dict(vocab=30, emsize=8, hidden=(8,)),
                   ArrayConfig(8, 2, 16, NumberFormats(act_bits=10, act_frac=6, lut_frac=6, logit_frac=2,
                                                       cell_bits=10, weight_section="model"))),
    # row blocks shorter than a tile: some tile starts two blocks, so the bias ROM is read twice
    "short-blocks": (dict(vocab=11, emsize=8, hidden=(8,)), ArrayConfig(4, 8, 8)),
    # one array column, so blocks start 16 tiles apart: each block's bias is fetched in 8 words of
    # 2 rows while its first tile is in the pipeline, and the pointwise unit runs 4 phases of 1 lane
    "bias-phases": (dict(vocab=11, emsize=16, hidden=(30,)), ArrayConfig(16, 1, 4)),
    # 1,240 tiles and 581 address rows: the tile ROMs (3 banks of 512 tiles: the 216 past the first 1,024 fit
    # in half a bank) and addrs.mem (2 banks of 512 rows) are each read across banks; 10 embedding words a
    # token, so embedding.mem's tokens start at multiples of 10, not of a power of two
    "many-banks": (dict(vocab=13, emsize=20, hidden=(28,)), ArrayConfig(4, 1, 2)),
    # every module named lm0_...: the benches build the design's own top
    "prefixed": (dict(vocab=11, emsize=8, hidden=(8,)), ArrayConfig(8, 2, 4, module_prefix="lm0_")),
}


@pytest.fixture(scope="session", params=sorted(UNUSUAL))
def unusual_rtl(request, tmp_path_factory):
    model_kw, array = UNUSUAL[request.param]
    design = quantize(FloatModel.random(seed=4, **model_kw), array)
    ctx = rtl_context(design)
    assert ctx["bias_ports"] == (2 if request.param == "short-blocks" else 1)
    phases = {"bias-phases": (8, 4), "many-banks": (4, 1)}  # one column: blocks start 4 and 16 tiles apart
    assert (ctx["bias_phases"], ctx["pw_phases"]) == phases.get(request.param, (1, ctx["pw_phases"]))
    assert (ctx["tile_rom_banks"], ctx["addr_rom_banks"]) == ((3, 2) if request.param == "many-banks" else (1, 1))
    if request.param == "many-banks":
        assert (ctx["emb_words"], ctx["emb_rom_words"]) == (10, 130)
    return design, _render(tmp_path_factory, f"unusual-{request.param}", design)


@pytest.mark.parametrize("sim", SIMS)
def test_top_on_unusual_arrays(sim, unusual_rtl, sim_work):
    design, rtl = unusual_rtl
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, design.vocab_size, 24)]
    # half the tokens stall-free: enough to fill the layer wavefront and time a few full steps
    r = run_top(rtl, sim=sim, tokens=tokens, work_dir=sim_work, free_tokens=len(tokens) // 2)
    assert r.passed, f"{r.message} (log {r.log_path})"
    assert r.tokens_checked == len(tokens)
    assert r.token_interval == token_interval(design)


def saturating_design():
    """A small design in which accumulators, gate inputs, logits and cell states saturate."""
    rng = np.random.default_rng(0)
    m = FloatModel.random(seed=11, vocab=96, emsize=8, hidden=(11,), sparsity=0.3, scale=0.5)  # 11: a padding lane
    layers = list(m.layers)
    w = layers[0].w_ih.copy()
    w[::3] = 1.0  # every third row: equal positive weights on a large embedding -> acc saturates
    layers[0] = FloatLSTM(w, layers[0].w_hh, layers[0].bias)
    emb = np.abs(m.embedding) + 6.0 * (rng.random(m.embedding.shape) < 0.5)
    m = FloatModel(tuple(layers), emb, rng.normal(0, 100, 96))
    return quantize(m, ArrayConfig(8, 4, 4, formats=NumberFormats(acc_bits=24, cell_bits=16)))


@pytest.fixture(scope="session")
def sat_rtl(tmp_path_factory):
    return _render(tmp_path_factory, "saturating", saturating_design())


def test_saturating_design_saturates_everywhere(text):
    g = GoldenModel(saturating_design())
    g.run(text[:48])
    assert {"accumulator", "gate input", "logits", "cell"} <= set(g.sat.by_site), g.sat.by_site


@pytest.mark.parametrize("sim", SIMS)
def test_top_saturation_count(sim, sat_rtl, text, sim_work):
    r = run_top(sat_rtl, sim=sim, tokens=text[:48], work_dir=sim_work, seed=3)
    assert r.passed, f"{r.message} (log {r.log_path})"
    assert r.tokens_checked == 48 and r.sat_count > 0


# --- a corrupted ROM must fail -------------------------------------------------------


@pytest.fixture(scope="session")
def corrupt_rtl(tmp_path_factory):
    """A small design whose weights.mem the test edits (its own copy: Verilator builds once)."""
    design = quantize(FloatModel.random(seed=5, vocab=96, emsize=8, hidden=(12,), sparsity=0.5),
                      ArrayConfig(8, 4, 4))
    return design, _render(tmp_path_factory, "corrupt", design)


def _flip_weight(rtl, design, tile, row, col):
    """Flip the sign bit of weight (row, col) of a tile in weights.mem; returns the original text."""
    path = rtl / "weights.mem"
    original = path.read_text()
    lines = original.split()
    wb = design.array.formats.weight_bits
    rows, _ = tile_rom_shape(design.n_tiles)  # tile t: row t % rows, bank t // rows
    bit = ((tile // rows) * design.array.cells + row * design.array.cols + col) * wb + wb - 1
    width = len(lines[tile % rows])
    lines[tile % rows] = format(int(lines[tile % rows], 16) ^ (1 << bit), f"0{width}x")
    path.write_text("\n".join(lines) + "\n")
    return original


@pytest.mark.parametrize("sim", SIMS)
def test_a_corrupted_weight_rom_fails_the_top_bench(sim, corrupt_rtl, text, sim_work):
    design, rtl = corrupt_rtl
    tokens = text[:12]
    ok = run_top(rtl, sim=sim, tokens=tokens, work_dir=sim_work, stalls=False)
    assert ok.passed, f"the untouched copy must pass: {ok.message}"
    lstm0 = design.matrices[0]
    tiles = range(lstm0.tile_start, lstm0.tile_start + lstm0.n_tiles)
    # a real weight, and a padding cell (weight 0) of a real column, both in layer 0
    real = next((t, r, c) for t in tiles for r in range(design.array.rows) for c in range(design.array.cols)
                if design.tile_weight[t, r, c] != 0)
    pad = next((t, r, c) for t in tiles for r in range(design.array.rows) for c in range(design.array.cols)
               if design.tile_weight[t, r, c] == 0 and design.tile_addr[t, c, design.tile_sel[t, r, c]] < design.emsize
               and design.tile_addr[t, c, 0] != design.tile_addr[t, c, 1])
    for what, (t, r, c) in (("real weight", real), ("padding cell", pad)):
        original = _flip_weight(rtl, design, t, r, c)
        try:
            bad = run_top(rtl, sim=sim, tokens=tokens, work_dir=sim_work, stalls=False)
        finally:
            (rtl / "weights.mem").write_text(original)
        assert not bad.passed, f"flipping the {what} at tile {t} cell ({r}, {c}) went unnoticed"
        block = int(design.tile_block[t]) + int(c >= design.tile_split[t])
        assert f"block {block} " in bad.message and "expected" in bad.message, bad.message
