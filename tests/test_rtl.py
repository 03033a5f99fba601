"""The rendered RTL: it parses (pyverilog), is lint-clean (verilator -Wall, no waivers), follows the
house style, and its ROM files hold exactly the Design's arrays in docs/hardware.md's layouts."""

import dataclasses
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ccflow.arrayconfig import ArrayConfig, NumberFormats
from ccflow.design import Design
from ccflow.generate import (MEM_FILES, TEMPLATE_DIR, RenderError, block_interval, fold_tiles, mem_layout, pack_words,
                             read_mem, render_rtl, rtl_context, signed_bits, start_interval,
                             tile_rom_shape)
from ccflow.quantize import FloatModel, quantize
from ccflow.simulate import SimulationError, lint_verilator, parse_pyverilog, yosys_stat

MODULES = ["ccflow_accumulator", "ccflow_act_mem", "ccflow_controller", "ccflow_decoder_out", "ccflow_embedding",
           "ccflow_lut", "ccflow_mul", "ccflow_pipe_reg", "ccflow_pointwise", "ccflow_ram", "ccflow_rom", "ccflow_tile_rom", "ccflow_top", "mx_array",
           "mx_cell"]

# Several models and arrays, including odd ones: rows not a power of two, alpha not a power of
# two, alpha 1, a single array column, vocabulary smaller than a row block, wider accumulators,
# lut_frac == act_frac (no LUT shift), 4-bit weights; memories wider than Verilator's
# 8192-bit replication limit (activation 10,240 bits, cell state 13,824 bits).
CONFIGS = {
    "default": (dict(vocab=96, emsize=32, hidden=(64, 64), sparsity=0.75), ArrayConfig(16, 8, 8)),
    "tiny": (dict(vocab=13, emsize=8, hidden=(12,)), ArrayConfig(4, 2, 2)),
    "odd": (dict(vocab=20, emsize=10, hidden=(12, 20)),
            ArrayConfig(12, 3, 5, NumberFormats(act_bits=12, act_frac=8, lut_frac=8, cell_bits=20, acc_bits=40))),
    "narrow": (dict(vocab=3, emsize=6, hidden=(9,)),
               ArrayConfig(4, 1, 1, NumberFormats(weight_bits=4, logit_frac=4, lut_frac=3))),
    "wide": (dict(vocab=50, emsize=64, hidden=(256, 256), sparsity=0.8), ArrayConfig(32, 16, 8)),
    # one array column: the pointwise unit in 4 phases of 1 lane, each bias fetched in 4 words
    "phased": (dict(vocab=11, emsize=16, hidden=(30,)), ArrayConfig(16, 1, 4)),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def rendered(request, tmp_path_factory):
    model_kw, array = CONFIGS[request.param]
    design = quantize(FloatModel.random(seed=len(request.param), **model_kw), array)
    out = tmp_path_factory.mktemp(f"rtl-{request.param}")
    written = render_rtl(design, out)
    return design, out, written


def test_render_writes_every_file(rendered):
    design, out, written = rendered
    names = {p.name for p in written}
    assert {f"{m}.v" for m in MODULES} | {"array_config.json", "design.npz"} | set(MEM_FILES) <= names
    assert all(p.is_file() and p.parent == out for p in written)
    assert Design.load(out).matrices == design.matrices


def test_every_file_parses_with_pyverilog(rendered):
    _, out, _ = rendered
    assert parse_pyverilog(out) == {f"{m}.v": [m] for m in MODULES}


def test_verilator_lint_is_clean_without_waivers(rendered):
    _, out, _ = rendered
    result = lint_verilator(out)
    assert result.clean, result.output
    for p in out.glob("*.v*"):
        assert "lint_off" not in p.read_text(), p.name


def test_house_style(rendered):
    _, out, _ = rendered
    for p in sorted(out.glob("*.v")):
        text = p.read_text()
        code = re.sub(r"//.*", "", text)
        directives = re.findall(r"`default_nettype\s+(\w+)", code)
        assert directives == ["none", "wire"], (p.name, directives)
        assert code.rstrip().endswith("`default_nettype wire"), p.name
        assert re.findall(r"^\s*module\s+(\w+)", code, re.M) == [p.stem], p.name  # one module per file
        for word in ("logic", "always_ff", "always_comb", "always_latch", "typedef", "interface"):
            assert not re.search(rf"\b{word}\b", code), (p.name, word)
        initials = re.findall(r"\binitial\b(.*)", code)
        assert all("$readmemh" in i for i in initials) and (not initials or p.stem in ("ccflow_rom", "ccflow_tile_rom", "ccflow_lut")), p.name
        for name in re.findall(r"^\s*(?:input|output)\s+(?:wire|reg)\s*(?:signed\s*)?(?:\[[^\]]*\]\s*)?(\w+)",
                               code, re.M):
            # the top's streams keep their AXI4-Stream names (the one documented exception)
            assert name.endswith(("_i", "_o", "_ni")) or (p.stem == "ccflow_top" and name.startswith(("s_axis_", "m_axis_"))), (p.name, name)
        assert "negedge" not in code and "posedge rst" not in code, p.name  # synchronous reset only


def test_top_has_the_agreed_interface(rendered):
    _, out, _ = rendered
    code = re.sub(r"//.*", "", (out / "ccflow_top.v").read_text())
    header = code[code.index("module ccflow_top"): code.index(");")]
    assert re.search(r'parameter\s+MEM_DIR\s*=\s*"\."', header)
    ports = re.findall(r"(input|output)\s+wire\s*(\[[^\]]*\])?\s*(\w+)", header)
    assert [(d, n) for d, _, n in ports] == [
        ("input", "clk_i"), ("input", "rst_ni"), ("input", "s_axis_tvalid"), ("output", "s_axis_tready"),
        ("input", "s_axis_tdata"), ("output", "m_axis_tvalid"), ("input", "m_axis_tready"), ("output", "m_axis_tdata"),
        ("output", "trace_valid_o"), ("output", "trace_block_o"), ("output", "trace_acc_o"), ("output", "sat_count_o")]
    widths = {n: w.replace(" ", "") for _, w, n in ports}
    assert widths["s_axis_tdata"] == "[TOK_BYTES*8-1:0]"
    assert widths["m_axis_tdata"] == "[LOGIT_BYTES*8-1:0]"
    assert widths["trace_block_o"] == "[BLOCK_BITS-1:0]"
    assert widths["trace_acc_o"] == "[ROWS*ACC_BITS-1:0]"
    assert widths["sat_count_o"] == "[31:0]"


def test_sizes_match_the_design_and_agree_across_modules(rendered, rtl_sizes):
    """The sizes are module parameters (no `define, no header); a name means one number in every
    module that declares it, and that number is the design's."""
    design, out, _ = rendered
    sizes = rtl_sizes(out)
    fmt, arr = design.array.formats, design.array
    want = {"ROWS": arr.rows, "COLS": arr.cols, "ALPHA": arr.alpha, "SEL_BITS": arr.sel_bits,
            "WEIGHT_BITS": fmt.weight_bits, "ACT_BITS": fmt.act_bits, "ACC_BITS": fmt.acc_bits,
            "CELL_BITS": fmt.cell_bits, "LUT_BITS": fmt.lut_bits, "VOCAB": design.vocab_size,
            "BLOCKS": design.n_blocks, "MATRICES": len(design.matrices),
            "TOK_BITS": max(1, math.ceil(math.log2(design.vocab_size))),
            "BLOCK_BITS": max(1, math.ceil(math.log2(design.n_blocks)))}
    assert {k: sizes.get(k) for k in want} == {k: {v} for k, v in want.items()}
    ctx = rtl_context(design)
    for name, values in sizes.items():
        if name.lower() in ctx and isinstance(ctx[name.lower()], int):
            assert values == {ctx[name.lower()]}, name


@pytest.fixture(scope="module")
def static_reference(tmp_path_factory, static_bodies) -> dict[str, str]:
    """The static bodies of the default test design, rendered once for every comparison."""
    out = tmp_path_factory.mktemp("static-reference")
    render_rtl(quantize(FloatModel.random(seed=1, **CONFIGS["default"][0]), CONFIGS["default"][1]), out)
    return static_bodies(out)


def test_module_bodies_are_static_only_parameter_defaults_differ(rendered, static_reference, static_bodies):
    """Generate data, not code (hls4ml's split): designs of other sizes, formats, pointwise phases,
    bias fetches (phased words) and cell widths (one or two DSP products for f*c) render every
    module to the same text but for integer parameter defaults; the design's own numbers live in
    those defaults and the .mem files."""
    _, out, _ = rendered
    assert static_bodies(out) == static_reference


def test_two_bias_ports_render_the_same_static_bodies(static_reference, static_bodies, tmp_path):
    """Row blocks shorter than a tile (two bias reads a cycle) select a `generate if` branch, not
    other Verilog."""
    design = quantize(FloatModel.random(seed=2, vocab=11, emsize=8, hidden=(8,)), ArrayConfig(4, 8, 8))
    assert rtl_context(design)["bias_ports"] == 2
    render_rtl(design, tmp_path)
    assert static_bodies(tmp_path) == static_reference


@pytest.mark.parametrize("values, bits", [([0], 2), ([1], 2), ([-2], 2), ([2], 3), ([-3], 3), ([127, -128], 8),
                                          ([128], 9), ([-129], 9), ([5, -70000], 18)])
def test_signed_bits_is_the_narrowest_twos_complement_width(values, bits):
    assert signed_bits(np.array(values)) == bits


def test_embedding_address_is_shifts_and_adds_not_a_multiplier(tmp_path):
    """The embedding loader's token * EMB_WORDS (10 here: two set bits) is a sum of shifted copies of
    the token, so synthesis builds adders: yosys maps a written `*` onto a DSP block even by a small
    constant. (The benches check the words it reads: test_sim's many-banks design has 10 a token.)"""
    design = quantize(FloatModel.random(seed=4, vocab=13, emsize=20, hidden=(28,)), ArrayConfig(4, 1, 2))
    assert rtl_context(design)["emb_words"] == 10
    render_rtl(design, tmp_path)
    stat = yosys_stat(tmp_path, top="ccflow_embedding")
    assert stat["macc"] == 0 and not any("mul" in cell for cell in stat["cells"]), stat["cells"]
    assert any("add" in cell or "alu" in cell for cell in stat["cells"]), stat["cells"]


def test_bias_words_are_as_wide_as_the_largest_bias(rendered, rtl_sizes):
    """bias.mem holds each row's bias in bias_bits (not the accumulator's width): the narrowest
    two's-complement width of the design's biases, which the RTL sign-extends."""
    design, out, _ = rendered
    bits = rtl_context(design)["bias_bits"]
    assert bits <= design.array.formats.acc_bits
    assert rtl_sizes(out)["BIAS_BITS"] == {bits}
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    assert design.block_bias.min() >= lo and design.block_bias.max() <= hi
    if bits > 2:  # one bit fewer would not hold them
        assert design.block_bias.min() < lo // 2 or design.block_bias.max() > hi // 2
    words = (out / "bias.mem").read_text().split()
    k = rtl_context(design)["bias_phases"]  # a block's bias in k words of rows/k rows
    assert len(words) == design.n_blocks * k
    assert all(len(w) == math.ceil(design.array.rows // k * bits / 4) for w in words)


def test_mem_files_round_trip(rendered):
    design, out, _ = rendered
    for name, (fields, words) in mem_layout(design).items():
        lines = (out / name).read_text().splitlines()
        width = sum(v.shape[1] * bits for v, bits, _ in fields)
        assert len(lines) == words, name
        assert all(len(line) == math.ceil(width / 4) for line in lines), name
        back = read_mem(out / name, [(v.shape[1], bits, signed) for v, bits, signed in fields])
        for (values, _, _), got in zip(fields, back):
            np.testing.assert_array_equal(got, values, err_msg=name)
    # the layouts of docs/hardware.md, spelled out for one tile
    t, r, c = design.n_tiles - 1, design.array.rows - 1, design.array.cols - 1
    rows, banks = tile_rom_shape(design.n_tiles)  # weights.mem: tile t in row t % rows, bank t // rows
    word = int((out / "weights.mem").read_text().split()[t % rows], 16)
    wb = design.array.formats.weight_bits
    v = (word >> (((t // rows) * design.array.cells + r * design.array.cols + c) * wb)) & ((1 << wb) - 1)
    assert v - ((v >> (wb - 1)) << wb) == design.tile_weight[t, r, c]
    meta = tile_metas(out, design)[t]
    bb = rtl_context(design)["block_bits"]
    assert meta & ((1 << bb) - 1) == design.tile_block[t]
    assert (meta >> bb) & 1 == design.tile_first[t] and (meta >> (bb + 1)) & 1 == design.tile_last[t]
    sb = rtl_context(design)["split_bits"]
    assert (meta >> (bb + 2)) & ((1 << sb) - 1) == design.tile_split[t]
    row = meta >> (bb + 2 + sb)  # the tile's row of addrs.mem: the act words it reads
    words = address_row_words(out, design)[row]
    lb, alpha = rtl_context(design)["local_bits"], design.array.alpha
    for c in range(design.array.cols):
        for k in range(alpha):
            got = (words >> ((c * alpha + k) * lb)) & ((1 << lb) - 1)
            assert got == design.tile_addr[t, c, k] // alpha and design.tile_addr[t, c, k] % alpha == k
    # embedding.mem: word v * emb_words + j holds token v's act words j*alpha .. j*alpha + alpha - 1 (no
    # padding between tokens), zero past emsize
    ew, ab = rtl_context(design)["emb_words"], design.array.formats.act_bits
    lines = (out / "embedding.mem").read_text().split()
    assert len(lines) == design.vocab_size * ew
    for v in (1, design.vocab_size - 1):
        for j in range(ew):
            word = int(lines[v * ew + j], 16)
            for k in range(alpha):
                x = (word >> (k * ab)) & ((1 << ab) - 1)
                want = design.embedding[v, j * alpha + k] if j * alpha + k < design.emsize else 0
                assert x - ((x >> (ab - 1)) << ab) == want


def tile_metas(rtl_dir, design) -> list[int]:
    """Each tile's tiles.mem word, unfolded: tile t in row t % rows, bank t // rows (docs/hardware.md)."""
    ctx = rtl_context(design)
    rows, bits = ctx["tile_rom_rows"], ctx["tile_meta_bits"]
    lines = [int(w, 16) for w in (Path(rtl_dir) / "tiles.mem").read_text().split()]
    assert len(lines) == rows
    return [(lines[t % rows] >> (t // rows * bits)) & ((1 << bits) - 1) for t in range(design.n_tiles)]


def test_tile_rom_banks_are_halved_only_where_the_last_bank_would_be_half_empty():
    """Banks of 1,024 tiles, or of 512 when the tiles past the last full 1,024 fit in 512 (a last bank of
    1,024 would waste more than half its block RAM; docs/hardware.md)."""
    assert tile_rom_shape(675) == (675, 1) and tile_rom_shape(1024) == (1024, 1)
    assert tile_rom_shape(6875) == (1024, 7) and tile_rom_shape(5085) == (1024, 5)  # 731 and 989 past 1,024s
    assert tile_rom_shape(6604) == (512, 13) and tile_rom_shape(1025) == (512, 3)   # 460 and 1
    assert tile_rom_shape(4659, bank_rows=512) == (512, 10)  # addrs.mem: always banks of 512


def address_row_words(rtl_dir, design) -> list[int]:
    """Each address row of addrs.mem, unfolded: row a in line a % rows, bank a // rows (docs/hardware.md)."""
    ctx = rtl_context(design)
    rows, bits = ctx["addr_rom_rows"], design.array.cols * design.array.alpha * ctx["local_bits"]
    lines = [int(w, 16) for w in (Path(rtl_dir) / "addrs.mem").read_text().split()]
    assert len(lines) == rows
    return [(lines[a % rows] >> (a // rows * bits)) & ((1 << bits) - 1) for a in range(ctx["n_addr_rows"])]


def test_tiles_that_read_the_same_words_share_an_address_row(tmp_path):
    """addrs.mem keeps one row per distinct set of act words: with whole-matrix groups the row
    blocks of a matrix read the same words, so there are far fewer rows than tiles, and every
    tile's row (its tiles.mem field) holds exactly the words it reads."""
    model, packings = FloatModel.random(seed=4, vocab=13, emsize=16, hidden=(32,), sparsity=0.8).combined(4, 0.5, None)
    design = quantize(model, ArrayConfig(8, 2, 4), packings)
    ctx = rtl_context(design)
    render_rtl(design, tmp_path)
    rows = address_row_words(tmp_path, design)
    metas = tile_metas(tmp_path, design)
    assert len(rows) == ctx["n_addr_rows"] < design.n_tiles // 2
    lb, alpha, cols = ctx["local_bits"], design.array.alpha, design.array.cols
    for t, meta in enumerate(metas):
        words = rows[meta >> ctx["tile_info_bits"]]
        got = [(words >> (i * lb)) & ((1 << lb) - 1) for i in range(cols * alpha)]
        assert got == list((design.tile_addr[t] // alpha).reshape(-1)), t


def test_an_undefined_template_variable_is_a_one_line_error(tmp_path):
    design = quantize(FloatModel.random(seed=1), ArrayConfig(4, 2, 2))
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATE_DIR, templates)
    (templates / "oops.v.j2").write_text("module oops;\n  localparam X = {{ no_such_variable }};\nendmodule\n")
    with pytest.raises(RenderError) as e:
        render_rtl(design, tmp_path / "out", template_dir=templates)
    assert "\n" not in str(e.value)
    assert "oops.v.j2" in str(e.value) and "no_such_variable" in str(e.value)
    (templates / "oops.v.j2").write_text("// {{ matrices[0].no_such_field }}\n")
    with pytest.raises(RenderError, match=r"oops\.v\.j2.*no_such_field") as e:
        render_rtl(design, tmp_path / "out", template_dir=templates)
    assert "\n" not in str(e.value)


def test_a_value_that_does_not_fit_its_field_is_refused():
    with pytest.raises(RenderError, match="weights.mem"):
        pack_words("weights.mem", [(np.array([[127, -128, 200]]), 8, True)])
    assert pack_words("x.mem", [(np.array([[1, -1], [-128, 127]]), 8, True)]) == "ff01\n7f80\n"
    assert pack_words("t.mem", [(np.array([[5]]), 3, False), (np.array([[1]]), 1, False),
                                (np.array([[0]]), 1, False)]) == "0d\n"


def test_the_checks_can_fail(tmp_path):
    """pyverilog and the linter do reject what they should (so a clean result means something)."""
    design = quantize(FloatModel.random(seed=2), ArrayConfig(4, 2, 2))
    render_rtl(design, tmp_path)
    mul = tmp_path / "ccflow_mul.v"
    good = mul.read_text()
    line = "assign p_o = p_q2;"
    assert line in good  # the mutations below apply
    mul.write_text(good.replace(line, line[:-1]))  # no semicolon
    with pytest.raises(SimulationError, match="ccflow_mul.v"):
        parse_pyverilog(tmp_path)
    mul.write_text(good.replace(line, "assign p_o = p_q2[7:0];"))
    result = lint_verilator(tmp_path)
    assert not result.clean and any("WIDTH" in w for w in result.warnings)


def test_yosys_gives_a_resource_estimate(tmp_path):
    design = quantize(FloatModel.random(seed=3), ArrayConfig(4, 2, 2))
    render_rtl(design, tmp_path)
    stat = yosys_stat(tmp_path)
    lanes = rtl_context(design)["pw_lanes"]
    assert stat["macc"] >= design.array.cells + 3 * lanes  # the MX cells and the pointwise products
    arr = design.array
    tables = (3 * lanes + 1) // 2 + lanes  # dual-port sigmoid and tanh tables shared by the lanes
    # tile ROMs (4), bias (one read port here) + shift + blocks (3), matrices, embedding, the tables,
    # the act banks (one RAM per array column and bank) and the cell state: every memory stays a memory
    assert rtl_context(design)["bias_ports"] == 1
    assert stat["memories"] == 4 + 3 + 1 + 1 + tables + arr.cols * arr.alpha + 1
    rows, banks = tile_rom_shape(design.n_tiles)
    assert stat["rom_bits"]["weights.mem"] == rows * banks * design.array.cells * design.array.formats.weight_bits


def test_the_ip_files_list_the_design(rendered, tmp_path):
    """files.f and the FuseSoC core name every module and ROM; Verilator lints the IP from files.f alone."""
    import os
    import subprocess

    from ccflow.simulate import verilator_env

    design, out, written = rendered
    files = [ln for ln in (out / "files.f").read_text().splitlines() if ln and not ln.startswith("//")]
    assert files == [f"{m}.v" for m in MODULES]
    core = (out / "ccflow.core").read_text()
    assert core.startswith("CAPI=2:") and "toplevel: ccflow_top" in core
    assert all(f"- {m}.v" in core for m in MODULES) and all(f"- {name}: {{copyto: {name}}}" in core for name in MEM_FILES)
    p = subprocess.run(["verilator", "--lint-only", "-Wall", "-f", "files.f", "--top-module", "ccflow_top"],
                       cwd=out, capture_output=True, text=True, env={**os.environ, **verilator_env()})
    assert p.returncode == 0, p.stderr


def test_a_module_prefix_renames_every_module_and_nothing_else(tmp_path):
    """array.module_prefix: every module, instance type, file name, files.f and core take it, the code is
    otherwise the plain design's, and two prefixed designs lint together as one project."""
    import os

    from ccflow.simulate import verilator_env

    model_kw, array = CONFIGS["tiny"]
    plain = quantize(FloatModel.random(seed=3, **model_kw), array)
    render_rtl(plain, tmp_path / "plain")
    names = "|".join(sorted(MODULES, key=len, reverse=True))
    for prefix in ("a_", "lm1_"):
        design = quantize(FloatModel.random(seed=3, **model_kw), dataclasses.replace(array, module_prefix=prefix))
        out = tmp_path / prefix
        render_rtl(design, out)
        assert sorted(p.name for p in out.glob("*.v")) == sorted(f"{prefix}{m}.v" for m in MODULES)
        for m in MODULES:
            code = (out / f"{prefix}{m}.v").read_text()
            assert re.search(rf"^module {prefix}{m} ", code, re.M)
            types = re.findall(r"^\s*(\w+)\s+(?:#|u_)", re.sub(r"//.*", "", code), re.M)
            assert all(t.startswith(prefix) for t in types if t != "module"), (m, types)
            assert re.sub(rf"\b{prefix}({names})\b", r"\1", code) == (tmp_path / "plain" / f"{m}.v").read_text()
        assert parse_pyverilog(out)[f"{prefix}ccflow_top.v"] == [f"{prefix}ccflow_top"]
        files = [ln for ln in (out / "files.f").read_text().splitlines() if ln and not ln.startswith("//")]
        assert files == sorted(f"{prefix}{m}.v" for m in MODULES)
        assert f"toplevel: {prefix}ccflow_top" in (out / "ccflow.core").read_text()
        assert lint_verilator(out).clean  # the top is the design's own
    # one project, two designs: a top that instantiates both lints clean with every file of both
    (tmp_path / "both.v").write_text(
        "`default_nettype none\nmodule both (input wire clk_i, input wire rst_ni);\n"
        + "".join(f"  {p}ccflow_top u_{p}top (.clk_i(clk_i), .rst_ni(rst_ni));\n" for p in ("a_", "lm1_"))
        + "endmodule\n`default_nettype wire\n")
    both = [str(tmp_path / "both.v")] + [str(f) for p in ("a_", "lm1_") for f in sorted((tmp_path / p).glob("*.v"))]
    r = subprocess.run(["verilator", "--lint-only", "--top-module", "both", "-Wno-PINMISSING", *both],
                       capture_output=True, text=True, env={**os.environ, **verilator_env()})
    assert r.returncode == 0, r.stderr[-2000:]  # two plain designs: MODDUP on every module


@pytest.mark.parametrize("prefix", ["1x_", "lm-0", "a b"])
def test_a_module_prefix_that_is_no_verilog_identifier_is_refused(prefix):
    with pytest.raises(ValueError, match=r"array.module_prefix=.* must be empty or start a Verilog identifier"):
        ArrayConfig(module_prefix=prefix)


def test_an_array_taller_than_the_banks_can_take_is_refused():
    design = quantize(FloatModel.random(seed=1), ArrayConfig(32, 2, 4))  # 8 units per block, 4 banks
    with pytest.raises(RenderError, match=r"alpha >= rows/4 = 8"):
        rtl_context(design)


def _fill(tb: str, ctx: dict) -> str:
    """A hand-written bench with the design's sizes: @name@ is rtl_context's name."""
    return re.sub(r"@([a-z_]+)@", lambda m: str(ctx[m.group(1)]), tb)


ACT_MEM_TB = """
module tb;
  reg clk = 0;
  reg emb_we = 0;
  reg [@pw_lanes@-1:0] h_we = 0;
  wire [@cols@*@alpha@*@act_bits@-1:0] rd_data;
  ccflow_act_mem u_dut (
    .clk_i(clk), .rd_addr_i({@cols@*@alpha@*@local_bits@{1'b0}}), .parity_i(1'b0),
    .own_i({(@local_bits@+1){1'b0}}), .own_valid_i(1'b0), .rd_data_o(rd_data),
    .h_we_i(h_we), .h_bank_i({@pw_lanes@*@bank_bits@{1'b0}}),
    .h_word_i({@pw_lanes@*@local_bits@{1'b0}}), .h_i({@pw_lanes@*@act_bits@{1'b0}}),
    .h_copy_i(1'b0), .emb_we_i(emb_we), .emb_word_i({@local_bits@{1'b0}}), .emb_copy_i(1'b0),
    .emb_i({@alpha@*@act_bits@{1'b0}})
  );
  initial begin
    #1 clk = 1; #1 clk = 0;
    emb_we = EMB; h_we = H;
    #1 clk = 1; #1 clk = 0;
    $display("no assertion fired");
    $finish;
  end
endmodule
"""


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed (make setup)")
@pytest.mark.parametrize("emb_we, h_we, fires", [(1, 1, "an embedding and a hidden-state write"),
                                                 (0, 3, "two hidden-state writes to bank 0"), (1, 0, None)])
def test_the_rtl_assertions_fire(tmp_path, emb_we, h_we, fires):
    """The simulation-only invariants in the RTL stop a simulation that breaks them: here the act
    memory's write ports (an embedding word in the cycle of an h write; two lanes on one bank)."""
    out = tmp_path / "rtl"
    design = quantize(FloatModel.random(seed=2, vocab=13, emsize=8, hidden=(12,)), ArrayConfig(8, 8, 4))
    assert rtl_context(design)["pw_lanes"] == 2  # two lanes can aim at one bank
    render_rtl(design, out)
    tb = tmp_path / "tb.v"
    tb.write_text(_fill(ACT_MEM_TB, rtl_context(design)).replace("EMB;", f"1'b{emb_we};").replace("H;", f"{h_we};"))
    vvp = tmp_path / "tb.vvp"
    subprocess.run(["iverilog", "-g2012", "-I", str(out), "-o", str(vvp), str(tb), str(out / "ccflow_act_mem.v"),
                    str(out / "ccflow_ram.v")], check=True, capture_output=True, text=True)
    run = subprocess.run(["vvp", "-n", str(vvp)], capture_output=True, text=True, cwd=tmp_path)
    if fires:
        assert fires in run.stdout + run.stderr and "no assertion fired" not in run.stdout
    else:
        assert "no assertion fired" in run.stdout and "FATAL" not in run.stdout + run.stderr


TILE_ROM_TB = """
module tb;
  reg clk = 0;
  reg [3:0] addr = 0;
  wire [5:0] data;
  ccflow_tile_rom #(.WIDTH(6), .ADDR_BITS(4), .ROWS(4), .ROW_BITS(2), .BANKS(3), .FILE("rom.mem")) u_dut (
    .clk_i(clk), .addr_i(addr), .data_o(data));
  integer i;
  initial begin
    for (i = 0; i < 13; i = i + 1) begin  // a new address every cycle, its word after the third edge
      addr = i % 11;
      #1 clk = 1; #1 clk = 0;
      if (i >= 2) $display("word %0d = %0d", i - 2, data);
    end
    $finish;
  end
endmodule
"""


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed (make setup)")
def test_the_tile_rom_reads_every_bank_three_cycles_later(tmp_path):
    """ccflow_tile_rom with several banks (the generated designs here stay below 1,024 tiles, one bank):
    11 words folded by fold_tiles into 3 banks of 4 rows read back in order, one per cycle."""
    out = tmp_path / "rtl"
    render_rtl(quantize(FloatModel.random(seed=2, vocab=13, emsize=8, hidden=(12,)), ArrayConfig(8, 4, 4)), out)
    words = np.array([[(7 * w + 3) % 64] for w in range(11)])
    folded = fold_tiles(words, bank_rows=4)
    assert folded.shape == (4, 3) and folded[3, 2] == 0  # the row past the last word is zero
    (tmp_path / "rom.mem").write_text(pack_words("rom.mem", [(folded, 6, False)]))
    (tmp_path / "tb.v").write_text(TILE_ROM_TB)
    vvp = tmp_path / "tb.vvp"
    subprocess.run(["iverilog", "-o", str(vvp), str(tmp_path / "tb.v"), str(out / "ccflow_tile_rom.v")],
                   check=True, capture_output=True, text=True)
    run = subprocess.run(["vvp", "-n", str(vvp)], capture_output=True, text=True, cwd=tmp_path)
    got = dict(map(int, m) for m in re.findall(r"word (\d+) = (\d+)", run.stdout))
    assert got == {w: int(words[w, 0]) for w in range(11)}, run.stdout + run.stderr


PHASE_DESIGNS = [  # (model, array): pointwise phases 1, 2, 4 and 8; bias fetched in 1 or 4 words
    (dict(vocab=11, emsize=8, hidden=(10, 6)), ArrayConfig(16, 8, 4)),
    (dict(vocab=11, emsize=8, hidden=(10, 6)), ArrayConfig(16, 4, 4)),
    (dict(vocab=11, emsize=16, hidden=(30,)), ArrayConfig(16, 1, 4)),
    (dict(vocab=50, emsize=64, hidden=(96, 96), sparsity=0.8), ArrayConfig(32, 2, 8)),
]


def _issue_order_gaps(design, starts: bool) -> int:
    """The fewest tiles between two block ends (or block starts) over two whole steps of tiles in
    matrix order: what the hardware sees without stalls, to check the render-time bounds against."""
    cols, t_all = design.array.cols, design.n_tiles
    lstm = np.zeros(t_all, dtype=bool)
    for m in design.lstm_layers:
        lstm[m.tile_start:m.tile_start + m.n_tiles] = True
    if starts:
        marks = [t for t in range(t_all) if design.tile_first[t] or design.tile_split[t] < cols]
    else:
        marks = [t for t in range(t_all) if design.tile_last[t] and lstm[t]]
    seq = marks + [t + t_all for t in marks]
    return min(b - a for a, b in zip(seq, seq[1:]))


@pytest.mark.parametrize("model_kw, array", PHASE_DESIGNS)
def test_phases_fit_between_blocks(model_kw, array):
    """The pointwise unit's phases divide the block's units, are a power of two, and fit between two
    LSTM blocks as the tiles come; one more doubling would not. The bias fetch fits between two
    block starts and finishes by the accumulation cycle S."""
    design = quantize(FloatModel.random(seed=4, **model_kw), array)
    ctx = rtl_context(design)
    units, phases = array.rows // 4, ctx["pw_phases"]
    assert block_interval(design) <= _issue_order_gaps(design, starts=False)
    assert units % phases == 0 and phases & (phases - 1) == 0 and phases <= block_interval(design)
    assert units % (2 * phases) or 2 * phases > block_interval(design)
    assert ctx["pw_lanes"] * phases == units and ctx["pw_lanes"] <= array.alpha
    k = ctx["bias_phases"]
    assert start_interval(design) <= _issue_order_gaps(design, starts=True)
    if k > 1:
        line = ctx["acc_stage"] - ctx["meta_stage"]  # cycles from the tile's tiles.mem word to S
        assert array.rows % k == 0 and k + 3 <= line and start_interval(design) >= line
        words = read_mem_words(design, "bias.mem")
        assert len(words) == design.n_blocks * k  # block b's rows [j * rows/k, (j+1) * rows/k) in word b*k + j
    else:
        line = ctx["acc_stage"] - ctx["meta_stage"]
        assert start_interval(design) < line or array.rows % 2 or line < 5


def read_mem_words(design, name):
    fields, words = mem_layout(design)[name]
    return pack_words(name, fields).split()


POINTWISE_TB = """
module tb;
  reg clk = 0, rst_n = 0, valid = 0;
  ccflow_pointwise #(.MEM_DIR("@RTL@")) u_dut (
    .clk_i(clk), .rst_ni(rst_n), .valid_i(valid), .z_i({@rows@*@act_bits@{1'b0}}),
    .desc_i({@bdesc_bits@{1'b0}}), .tag_i({@tag_bits@{1'b0}}), .h_we_o(), .h_bank_o(), .h_word_o(),
    .h_o(), .h_copy_o(), .h_we_soon_o(), .commit_o(), .commit_mat_o(), .sat_events_o()
  );
  integer i;
  initial begin
    #1 clk = 1; #1 clk = 0;
    rst_n = 1; valid = 1;
    #1 clk = 1; #1 clk = 0;
    valid = 0;
    for (i = 1; i < GAP; i = i + 1) begin
      #1 clk = 1; #1 clk = 0;
    end
    valid = 1;
    #1 clk = 1; #1 clk = 0;
    valid = 0;
    #1 clk = 1; #1 clk = 0;
    $display("no assertion fired");
    $finish;
  end
endmodule
"""


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed (make setup)")
@pytest.mark.parametrize("gap, fires", [(1, True), (2, False)])
def test_a_block_within_the_phases_of_the_one_before_stops_the_simulation(tmp_path, gap, fires):
    """The pointwise unit takes a block in pw_phases cycles (2 here); a block that comes sooner would
    overwrite the units still waiting, and the RTL assertion says so."""
    out = tmp_path / "rtl"
    design = quantize(FloatModel.random(seed=4, vocab=11, emsize=8, hidden=(10, 6)), ArrayConfig(16, 4, 4))
    assert rtl_context(design)["pw_phases"] == 2
    render_rtl(design, out)
    tb = tmp_path / "tb.v"
    tb.write_text(_fill(POINTWISE_TB, rtl_context(design)).replace("@RTL@", str(out)).replace("GAP;", f"{gap};"))
    vvp = tmp_path / "tb.vvp"
    subprocess.run(["iverilog", "-g2012", "-I", str(out), "-o", str(vvp), str(tb)]
                   + [str(out / f"{m}.v") for m in ("ccflow_pointwise", "ccflow_ram", "ccflow_lut", "ccflow_mul")],
                   check=True, capture_output=True, text=True)
    run = subprocess.run(["vvp", "-n", str(vvp)], capture_output=True, text=True, cwd=tmp_path)
    if fires:
        assert "arrived in phase 1 of the one before" in run.stdout + run.stderr
        assert "no assertion fired" not in run.stdout
    else:
        assert "no assertion fired" in run.stdout and "FATAL" not in run.stdout + run.stderr


def test_the_token_interval_needs_a_full_wavefront():
    """Accepts while the layer wavefront fills come faster (fewer matrices per step): with too few
    stall-free tokens the interval is 0.0 (not measured), not the filling steps' figure; the
    schedule model's interval is the tile count for a design whose matrices outlast the pipeline."""
    from ccflow.generate import token_interval
    from ccflow.schedule import steady_interval

    assert steady_interval([0, 100, 300, 700], n_mats=4) == 0.0
    assert steady_interval([0, 100, 300, 700, 1100, 1500, 1900, 2300], n_mats=4) == 400.0
    design = quantize(FloatModel.random(seed=4, vocab=50, emsize=64, hidden=(96, 96), sparsity=0.8),
                      ArrayConfig(32, 2, 8))
    assert token_interval(design) == design.n_tiles
