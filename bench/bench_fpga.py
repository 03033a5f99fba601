"""FPGA benchmark: the hardware targets of the issue "Hardware an FPGA can hold", measured.

    python bench/bench_fpga.py --rtl build/tiny/rtl [--xilinx]      (make bench-fpga)

Runs yosys synth_ecp5 + nextpnr-ecp5 for the LFE5U-85F on an rtl folder (ccflow.fpga.run_ecp5,
inside the implementation harness) and prints each target next to the measured figure:
synthesis time and peak memory, Fmax against 100 MHz, resources, cycles per token against the
ideal (packed cells / array cells, from the simulations in report.json) and tokens/s. Run it on
a quiet machine: the tools are single-threaded WebAssembly and time is what is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ccflow.fpga import FpgaError, format_report, run_ecp5, run_xilinx

TARGETS = {"synth_seconds": 120.0, "synth_peak_mb": 2048.0, "fmax_mhz": 100.0, "cycle_ratio": 1.03}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtl", default="build/tiny/rtl", help="a folder made by `make rtl` (default build/tiny/rtl)")
    ap.add_argument("--freq", type=float, default=100.0, help="target clock in MHz (default 100)")
    ap.add_argument("--xilinx", action="store_true", help="also the yosys synth_xilinx estimate for the XC7VX485T")
    args = ap.parse_args(argv)
    rtl = Path(args.rtl)
    if not (rtl / "report.json").is_file():
        print(f"bench_fpga: {rtl}/report.json not found; run `make rtl` (and `make sim` for cycles per token)",
              file=sys.stderr)
        return 2
    try:
        r = run_ecp5(rtl, freq_mhz=args.freq)
        if args.xilinx:
            r["xilinx"] = run_xilinx(rtl)
    except FpgaError as e:
        print(f"bench_fpga: {e}", file=sys.stderr)
        return 2
    report = json.loads((rtl / "report.json").read_text())
    print(format_report(r))
    print()
    print(f"{'target':<44}{'goal':>12}{'measured':>14}  verdict")
    rows = [("synthesis time (s)", "<", TARGETS["synth_seconds"], r["synth_seconds"]),
            ("synthesis peak memory (MB)", "<", TARGETS["synth_peak_mb"], r["synth_peak_mb"]),
            (f"Fmax on the LFE5U-85F (MHz, target {args.freq:g})", ">=", TARGETS["fmax_mhz"], r["fmax_mhz"] or 0.0)]
    sims = {k: s for k, s in (report.get("sims") or {}).items() if s and s.get("token_interval")}
    if sims:
        interval = max(s["token_interval"] for s in sims.values())
        rows.append(("cycles per token / ideal (from the small shape up)", "<=", TARGETS["cycle_ratio"],
                     interval / report["ideal_cycles"]))
    for what, op, goal, got in rows:
        ok = got < goal if op == "<" else got >= goal if op == ">=" else got <= goal
        print(f"{what:<44}{op + ' ' + format(goal, 'g'):>12}{got:>14.3f}  {'met' if ok else 'NOT met'}")
    if r.get("tokens_per_s"):
        print(f"\n{r['tokens_per_s']:,.0f} tokens/s at {r['fmax_mhz']:.1f} MHz "
              f"({r['token_interval']:.1f} cycles per token); {r.get('effective_gops', 0):.3f} effective GOP/s "
              f"(2 x dense weights x tokens/s; ESE, FPGA'17: 282 GOP/s on a KU060 at 200 MHz)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
