"""The HLS C++: rendered, compiled with g++ as a C simulation, bit-exact with the golden model."""

import dataclasses
import re
import shutil

import numpy as np
import pytest

from ccflow.arrayconfig import ArrayConfig, NumberFormats
from ccflow.corpus import load_corpus
from ccflow.golden import GoldenModel
from ccflow.hls import TEMPLATE_DIR, HlsError, build_hls, check_hls, render_hls
from ccflow.quantize import FloatLSTM, FloatModel, quantize

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")

VOCAB = 96  # the builtin corpus' vocabulary


@pytest.fixture(scope="module")
def text():
    corpus = load_corpus("builtin")
    assert corpus.ntokens == VOCAB
    return corpus.test


def render_and_build(design, out_dir):
    render_hls(design, out_dir)
    build_hls(out_dir)
    return out_dir


# name: (ArrayConfig, FloatModel.random kwargs, combine gamma or None for the quantizer's default)
DESIGNS = {
    # the sample design of the docs: 3 layers, every block full
    "16x8-a8": (ArrayConfig(rows=16, cols=8, alpha=8), dict(emsize=32, hidden=(64, 64)), None),
    # 20-row blocks: partial last LSTM blocks (48 and 56 rows), decoder padded 96 -> 100 rows; CPCC packing
    "20x3-a4-padded": (ArrayConfig(rows=20, cols=3, alpha=4), dict(emsize=10, hidden=(12, 14)), 0.5),
    # alpha not a power of two, narrow formats (act 12 bits, acc 26, cell 18), partial blocks, an
    # exponent per row
    "12x5-a3-narrow": (ArrayConfig(rows=12, cols=5, alpha=3, formats=NumberFormats(
        weight_bits=6, act_bits=12, act_frac=8, acc_bits=26, cell_bits=18, lut_frac=5, logit_frac=6,
        weight_section="row")),
        dict(emsize=16, hidden=(20,)), None),
    # wide formats: int32 activations, int64 accumulator, 16384-entry LUTs
    "8x4-a16-wide": (ArrayConfig(rows=8, cols=4, alpha=16, formats=NumberFormats(
        weight_bits=12, act_bits=20, act_frac=14, acc_bits=44, cell_bits=30, lut_frac=8, logit_frac=10)),
        dict(emsize=12, hidden=(24,)), None),
    # degenerate array: one column, no multiplexing, one LSTM layer
    "4x1-a1": (ArrayConfig(rows=4, cols=1, alpha=1), dict(emsize=6, hidden=()), None),
}


def make_design(name, seed=0):
    array, kw, gamma = DESIGNS[name]
    model = FloatModel.random(seed=seed, vocab=VOCAB, **kw)
    packings = None
    if gamma is not None:
        model, packings = model.combined(array.alpha, gamma, row_block=array.rows)
    return quantize(model, array, packings)


@pytest.mark.parametrize("name", list(DESIGNS))
def test_csim_is_bit_exact_on_real_text(name, text, tmp_path):
    design = make_design(name)
    if name == "20x3-a4-padded":
        assert design.decoder.n_blocks * design.array.rows > VOCAB
        assert any(m.rows % design.array.rows for m in design.lstm_layers)
    render_and_build(design, tmp_path)
    tokens = text[:1500] if name == "16x8-a8" else text[:500]
    result = check_hls(design, tmp_path, tokens, reset_at=[len(tokens) // 2])
    assert result.bit_exact, result.first_mismatch
    assert result.tokens_checked == len(tokens) and result.first_mismatch is None


@pytest.mark.parametrize("seed", range(6))
def test_csim_is_bit_exact_for_random_arrays(seed, text, tmp_path):
    """Random array shapes, alphas, layer sizes and CC/CPCC packings, a reset in the middle."""
    rng = np.random.default_rng(100 + seed)
    rows = int(rng.choice([4, 8, 12, 16, 24]))
    array = ArrayConfig(rows=rows, cols=int(rng.integers(1, 10)), alpha=int(rng.integers(1, 10)))
    hidden = tuple(int(h) for h in rng.integers(3, 30, int(rng.integers(0, 3))))
    model = FloatModel.random(seed=seed, vocab=VOCAB, emsize=int(rng.integers(4, 24)), hidden=hidden,
                              sparsity=float(rng.uniform(0.3, 0.9)))
    gamma = float(rng.choice([0.0, 0.5, 1.5]))
    model, packings = model.combined(array.alpha, gamma, row_block=rows)
    design = quantize(model, array, packings)
    render_and_build(design, tmp_path)
    start = int(rng.integers(0, len(text) - 300))
    tokens = text[start:start + 300]
    result = check_hls(design, tmp_path, tokens, reset_at=[int(rng.integers(1, 300))])
    assert result.bit_exact, f"{array}, hidden {hidden}, gamma {gamma}: {result.first_mismatch}"


def test_saturation_counts_match(text, tmp_path):
    """Accumulator, gate-input and cell saturation: the C++ count equals the golden model's, step by step."""
    rng = np.random.default_rng(5)
    fmt = NumberFormats(acc_bits=24, cell_bits=16)  # small accumulator and cell state
    model = FloatModel.random(seed=int(rng.integers(1 << 30)), vocab=VOCAB, hidden=(40, 40), sparsity=0.0)
    model = FloatModel(tuple(FloatLSTM(np.abs(l.w_ih), np.abs(l.w_hh), l.bias) for l in model.layers),
                       np.abs(model.embedding) + 4.0, model.decoder_bias)
    design = quantize(model, ArrayConfig(rows=8, cols=2, alpha=2, formats=fmt))
    tokens = text[:60]
    golden = GoldenModel(design)
    golden.run(tokens)
    assert all(golden.sat.by_site.get(site, 0) > 0 for site in ("accumulator", "gate input", "cell"))
    render_and_build(design, tmp_path)
    result = check_hls(design, tmp_path, tokens, reset_at=[30])  # the reset clears the count too
    assert result.bit_exact, result.first_mismatch
    assert result.saturations > 0


def test_a_corrupted_constant_fails_the_check(text, tmp_path):
    design = make_design("20x3-a4-padded", seed=3)
    render_hls(design, tmp_path)
    rom = tmp_path / "ccflow_rom.inc"
    lines = rom.read_text().splitlines()
    # the decoder's last row block, row 0: its bias moved by two logit LSBs
    start = next(i for i, l in enumerate(lines) if "BLOCK_BIAS[N_BLOCKS][ROWS]" in l)
    last = design.n_blocks - 1
    i = next(j for j in range(start, len(lines)) if lines[j].endswith(f"// block {last}"))
    old = int(re.match(r"\s*\{\{?(-?\d+)", lines[i]).group(1))
    delta = 1 << (int(design.block_shift[last, 0]) + 1)
    new = old - delta if old > 0 else old + delta
    lines[i] = re.sub(r"-?\d+", str(new), lines[i], count=1)
    rom.write_text("\n".join(lines) + "\n")
    result = check_hls(design, tmp_path, text[:20])  # builds the corrupted C++
    assert not result.bit_exact
    logit = (design.decoder.n_blocks - 1) * design.array.rows
    assert result.tokens_checked == 1 and f"logit {logit} " in result.first_mismatch, result.first_mismatch


def test_a_corrupted_tile_descriptor_stops_the_csim(text, tmp_path):
    design = make_design("4x1-a1", seed=1)
    render_hls(design, tmp_path)
    rom = tmp_path / "ccflow_rom.inc"
    src = rom.read_text()
    head, tail = src.split("TILE_LAST[N_TILES] = {\n", 1)
    tail = tail.replace("true", "false", 1)
    rom.write_text(head + "TILE_LAST[N_TILES] = {\n" + tail)
    with pytest.raises(HlsError, match="tile descriptor"):
        check_hls(design, tmp_path, text[:5])


def test_csim_of_another_design_is_reported(text, tmp_path):
    render_and_build(make_design("4x1-a1"), tmp_path)
    other = make_design("12x5-a3-narrow")
    result = check_hls(other, tmp_path, text[:5])
    assert not result.bit_exact and "another design" in result.first_mismatch


def test_an_undefined_template_variable_is_one_clear_line(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATE_DIR, templates)
    kernel = templates / "ccflow.cpp.j2"
    kernel.write_text(kernel.read_text() + "// {{ no_such_variable }}\n")
    line = kernel.read_text().count("\n")
    with pytest.raises(HlsError) as err:
        render_hls(make_design("4x1-a1"), tmp_path / "out", template_dir=templates)
    message = str(err.value)
    assert "\n" not in message
    assert f"ccflow.cpp.j2:{line}" in message and "no_such_variable" in message


def test_a_compile_error_shows_the_compiler_message(tmp_path):
    render_hls(make_design("4x1-a1"), tmp_path)
    kernel = tmp_path / "ccflow.cpp"
    kernel.write_text(kernel.read_text() + "\nint broken = undeclared_thing;\n")
    with pytest.raises(HlsError, match=r"(?s)g\+\+ could not compile.*undeclared_thing"):
        build_hls(tmp_path)


def test_rendered_files_and_pragmas(tmp_path):
    written = {p.name for p in render_hls(make_design("16x8-a8"), tmp_path)}
    assert {"ccflow.cpp", "ccflow.h", "ccflow_config.h", "ccflow_rom.inc", "tb_main.cpp", "run_hls.tcl"} <= written
    kernel = (tmp_path / "ccflow.cpp").read_text()
    for pragma in ("INTERFACE mode=ap_ctrl_hs port=return", "PIPELINE II=1",
                   "ARRAY_PARTITION variable=act type=complete"):
        assert f"#pragma HLS {pragma}" in kernel
    rom = (tmp_path / "ccflow_rom.inc").read_text()
    assert "#pragma HLS ARRAY_RESHAPE variable=TILE_WEIGHT type=complete dim=2" in rom
    for text in (kernel, rom, (tmp_path / "ccflow_config.h").read_text()):
        assert not re.search(r"\{\{\s*[A-Za-z_]|\{%", text)  # nothing left unrendered
    assert "config_rtl" not in (tmp_path / "run_hls.tcl").read_text()


def test_a_module_prefix_reaches_the_exported_rtl(tmp_path):
    """array.module_prefix: Vitis HLS prefixes every module it exports, as ccflow's own Verilog is."""
    design = make_design("4x1-a1")
    design = dataclasses.replace(design, array=dataclasses.replace(design.array, module_prefix="lm0_"))
    render_hls(design, tmp_path)
    tcl = (tmp_path / "run_hls.tcl").read_text().splitlines()
    assert tcl.index("config_rtl -module_prefix lm0_") > next(i for i, ln in enumerate(tcl) if ln.startswith("open_solution"))
