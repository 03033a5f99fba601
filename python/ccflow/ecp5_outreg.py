"""Move the register after an ECP5 block-RAM read into the block RAM's own output register, where the
RTL marks it so (the Verilog attribute ``ccflow_bram_outreg`` on the register).

Why: a DP16KD read without its output register (REGMODE "NOREG") has 5.61 ns from clock to data
(nextpnr-ecp5's LFE5U timing), with it ("OUTREG") 0.97 ns. yosys's ECP5 memory mapping always
writes NOREG, so the register the RTL puts after a block-RAM read stays a fabric flip-flop that the
placer may put anywhere, and the 5.6 ns then share a cycle with the route to it: the critical path
of the trained 16 x 2 designs (docs/hardware.md). Vivado absorbs such a register into RAMB18's
DOA_REG itself; this pass does the same on the synthesized netlist, before nextpnr reads it.
Why only where marked: a register inside the block RAM can no longer sit halfway to a far
consumer. The `tiny` default with every such register absorbed fell from 101.2 to 92.5 MHz: the
block descriptor ROM's word then crossed the die twice, through the pointwise unit's control LUTs,
in one cycle. The templates mark the registers whose next stop is near (ccflow_tile_rom's out_q
before its bank select, ccflow_lut's tables before their multipliers).

The rewrite is exact: a read port's data with OUTREG is its NOREG data one clock later, which is
what the flip-flop computed. A port is rewritten only when it qualifies as a whole (REGMODE is per
port): output clock enable tied to 1, reset tied to 0, clock not inverted, and every data bit that
is used at all drives exactly one flip-flop and nothing else -- a marked TRELLIS_FF on the same
clock net, clock not inverted, no clock enable, no set/reset, resetting to 0 (the output
register's value at configuration). Anything else is left as synthesized.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ATTRIBUTE = "ccflow_bram_outreg"  # on the register in the RTL; yosys keeps it on the wire's name
# The templates put the mark (with keep) under this macro, which `ccflow fpga` defines for yosys only when
# this pass runs: other flows, and the comparison without the pass, see the registers unmarked.
DEFINE = "CCFLOW_BRAM_OUTREG"

# The read ports of a DP16KD: (REGMODE parameters, clock, its mux parameter, output clock enable,
# resets, data-out pins). Two true ports of up to 18 bits, or -- DATA_WIDTH_B 36, yosys's mapping
# of a 36-bit read (its $__PDPW16KD_) -- one read port B whose 36 bits leave on DOA and DOB. For that
# one, nextpnr's own PDPW16KD conversion sets REGMODE_A and REGMODE_B alike from the one REGMODE
# and clocks every read signal by CLKB; the rewrite does the same and ties OCEA to 1 as well, so the
# register is enabled whichever enable the silicon consults.
def read_ports(cell: dict) -> list[tuple[tuple[str, ...], str, str, str, tuple[str, ...], list[str]]]:
    """The read ports of one netlist cell (none unless it is a DP16KD)."""
    if cell["type"] != "DP16KD":
        return []
    widths = (_param(cell, "DATA_WIDTH_A", "18"), _param(cell, "DATA_WIDTH_B", "18"))
    width = [int(w, 2) if set(w) <= {"0", "1"} and len(w) > 8 else int(w) for w in widths]
    if width[1] == 36:
        return [(("REGMODE_A", "REGMODE_B"), "CLKB", "CLKBMUX", "OCEB", ("RSTA", "RSTB"),
                 [f"DOA{i}" for i in range(18)] + [f"DOB{i}" for i in range(18)])]
    if width[0] == 36:
        return []
    return [((f"REGMODE_{p}",), f"CLK{p}", f"CLK{p}MUX", f"OCE{p}", (f"RST{p}",), [f"DO{p}{i}" for i in range(18)])
            for p in "AB"]


def _param(cell: dict, name: str, default: str = "") -> str:
    """A string parameter as yosys writes it (a trailing space marks a string that looks binary)."""
    return str(cell.get("parameters", {}).get(name, default)).rstrip()


def _tied(cell: dict, pin: str, value: str) -> bool:
    """Whether a one-bit pin is tied to the constant ``value`` ("0" or "1")."""
    return cell["connections"].get(pin) == [value]


def _plain_ff(ff: dict, clock: list) -> bool:
    """A TRELLIS_FF that only samples DI every edge of ``clock``: no enable, no set or reset."""
    conn = ff["connections"]
    enable_free = _param(ff, "CEMUX", "CE") == "1" or (_param(ff, "CEMUX", "CE") == "CE" and
                                                      conn.get("CE", ["1"]) == ["1"])
    reset_free = conn.get("LSR", ["0"]) == ["0"] and _param(ff, "LSRMUX", "LSR") == "LSR"
    return (conn.get("CLK") == clock and _param(ff, "CLKMUX", "CLK") == "CLK" and enable_free and reset_free
            and _param(ff, "REGSET", "RESET") == "RESET" and "M" not in conn)


def absorb_module(module: dict) -> tuple[int, int]:
    """Rewrite the qualifying read ports of one netlist module in place; (ports, flip-flops) absorbed."""
    cells = module.get("cells", {})
    marked = {b for net in module.get("netnames", {}).values() if ATTRIBUTE in net.get("attributes", {})
              for b in net["bits"] if isinstance(b, int)}
    sinks: dict[int, list[tuple[str, str]]] = {}
    for name, cell in cells.items():
        dirs = cell.get("port_directions", {})
        for pin, bits in cell["connections"].items():
            if dirs.get(pin, "input") != "output":
                for bit in bits:
                    if isinstance(bit, int):
                        sinks.setdefault(bit, []).append((name, pin))
    for port in module.get("ports", {}).values():
        if port["direction"] != "input":
            for bit in port["bits"]:
                if isinstance(bit, int):
                    sinks.setdefault(bit, []).append(("<port>", ""))

    ports = ffs = 0
    for cell in list(cells.values()):
        for regmodes, clk, clkmux, oce, resets, pins in read_ports(cell):
            clock = cell["connections"].get(clk)
            if (any(_param(cell, r, "NOREG") != "NOREG" for r in regmodes) or _param(cell, clkmux, clk) != clk
                    or not clock or not isinstance(clock[0], int) or not _tied(cell, oce, "1")
                    or not all(_tied(cell, r, "0") for r in resets)):
                continue
            moves = []  # (data pin, flip-flop name)
            for pin in pins:
                bits = cell["connections"].get(pin, [])
                users = sinks.get(bits[0], []) if bits and isinstance(bits[0], int) else []
                if not users:
                    continue
                ff = cells.get(users[0][0])
                if (len(users) != 1 or users[0][1] != "DI" or ff is None or ff["type"] != "TRELLIS_FF"
                        or not _plain_ff(ff, clock) or ff["connections"]["Q"][0] not in marked):
                    moves = None
                    break
                moves.append((pin, users[0][0]))
            if not moves:
                continue
            for pin, ff_name in moves:
                cell["connections"][pin] = cells.pop(ff_name)["connections"]["Q"]
            for r in regmodes:
                cell["parameters"][r] = "OUTREG"
            if len(regmodes) == 2:
                cell["connections"]["OCEA"] = ["1"]
            ports, ffs = ports + 1, ffs + len(moves)
    return ports, ffs


def absorb_output_registers(netlist: str | Path) -> dict:
    """Rewrite a yosys JSON netlist in place (atomically); return the counts for the report."""
    path = Path(netlist)
    design = json.loads(path.read_text())
    ports = ffs = 0
    for module in design["modules"].values():
        if not module.get("attributes", {}).get("blackbox"):
            p, f = absorb_module(module)
            ports, ffs = ports + p, ffs + f
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(design))
    os.replace(tmp, path)
    return {"bram_output_registers": {"ports": ports, "flip_flops": ffs}}
