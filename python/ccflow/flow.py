"""The stages after training, and the report they fill in.

corpus -> model (train.py) -> combine (packings from training) -> quantize ->
generate (RTL + HLS) -> simulate. Each function here runs one stage from files
on disk to files on disk, so the Makefile, the CLI and a Python sweep script
all drive the same code. Every stage adds its figures to ``report.json`` in
the rtl folder; :func:`summary` prints them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from .config import Config

REPORT = "report.json"
STIMULUS = "stimulus.json"


def build_rtl(checkpoint: str | Path, out_dir: str | Path, overrides=(), streams: int = 16,
              stimulus_tokens: int = 64, score: bool = True) -> dict:
    """Quantize a trained model, render Verilog + HLS + ROMs, pick the held-out stimulus, score BPC."""
    import torch

    from .checkpoint import load_model
    from .corpus import load_corpus
    from .evaluate import evaluate
    from .generate import render_rtl
    from .golden import fixed_point_bpc
    from .hls import render_hls
    from .quantize import FloatModel, quantize

    out_dir = Path(out_dir)
    trained = load_model(checkpoint)
    cfg: Config = trained.config.replace(overrides)
    design = quantize(FloatModel.from_torch(trained.model), cfg.array, trained.packings)
    render_rtl(design, out_dir)
    render_hls(design, out_dir / "hls")

    corpus = load_corpus(cfg.data.corpus, vocab=trained.vocab)
    test = corpus.test
    stimulus = [int(t) for t in test[:stimulus_tokens]]
    _write_json(out_dir / STIMULUS, {"split": "test", "tokens": stimulus, "text": corpus.decode(stimulus)})

    report = {
        "config": cfg.name, "corpus": corpus.name, "checkpoint": str(checkpoint), "vocab": corpus.ntokens,
        "array": f"{cfg.array.rows} x {cfg.array.cols} MX cells, alpha {cfg.array.alpha}",
        "tiles": design.n_tiles, "dense_cells": design.dense_cells, "packed_cells": design.packed_cells,
        "nnz": design.nnz, "utilization": design.nnz / design.packed_cells,
        "ideal_cycles": design.ideal_cycles, "quant_saturations": design.quant_saturations,
        "matrices": [asdict(m) for m in design.matrices], "sims": {}, "hls": None,
    }
    if score:
        streams = max(1, min(streams, len(test) // 2))
        with torch.no_grad():
            float_bpc = evaluate(trained.model, test, streams, cfg.train.bptt)
        report.update(float_bpc=float_bpc, fixed_bpc=fixed_point_bpc(design, test, streams, progress=True),
                      bpc_streams=streams, test_tokens=len(test))
    _write_json(out_dir / REPORT, report)
    return report


def simulate(rtl_dir: str | Path, sim: str = "icarus", tokens: int | None = None) -> dict:
    """Run the top-level cocotb bench over the stored stimulus; raise if not bit-exact."""
    from .simulate import run_top

    rtl_dir = Path(rtl_dir)
    stim = _read_json(rtl_dir / STIMULUS, "run `make rtl` first")["tokens"]
    if tokens is not None:
        stim = stim[:tokens]
    result = run_top(rtl_dir, sim=sim, tokens=stim)
    _update_report(rtl_dir, lambda r: r["sims"].__setitem__(sim, _plain(result)))
    if not result.passed:
        raise SystemExit(f"{sim}: hardware differs from the golden model; see {result.log_path}")
    return _plain(result)


def check_hls(rtl_dir: str | Path, tokens: int | None = None) -> dict:
    """Compile the HLS C++ with g++ and compare its C simulation with the golden model."""
    from .design import Design
    from .hls import check_hls as run_check

    rtl_dir = Path(rtl_dir)
    stim = _read_json(rtl_dir / STIMULUS, "run `make rtl` first")["tokens"]
    if tokens is not None:
        stim = stim[:tokens]
    result = run_check(Design.load(rtl_dir), rtl_dir / "hls", stim)
    _update_report(rtl_dir, lambda r: r.__setitem__("hls", _plain(result)))
    if not result.bit_exact:
        raise SystemExit(f"HLS C simulation differs from the golden model: {result.first_mismatch}")
    return _plain(result)


def summary(rtl_dir: str | Path) -> str:
    r = _read_json(Path(rtl_dir) / REPORT, "run `make rtl` first")
    lines = [f"ccflow summary ({r['config']}, {Path(rtl_dir)})",
             f"  corpus          {r['corpus']} (vocabulary {r['vocab']})"]
    if "float_bpc" in r:
        lines.append(f"  test BPC        float {r['float_bpc']:.4f}   fixed point {r['fixed_bpc']:.4f}   "
                     f"({r['test_tokens']} tokens in {r['bpc_streams']} streams)")
    lines += [
        f"  array           {r['array']}",
        f"  cells           dense {r['dense_cells']:,}   packed {r['packed_cells']:,}   "
        f"({r['dense_cells'] / r['packed_cells']:.2f}x fewer)",
        f"  utilization     {r['utilization']:.1%} ({r['nnz']:,} nonzero weights)",
        f"  ideal cycles    {r['ideal_cycles']:.1f} per token (packed cells / array cells), {r['tiles']} tiles",
    ]
    for sim, s in sorted(r["sims"].items()):
        verdict = f"bit-exact on {s['tokens_checked']} tokens" if s["passed"] else "MISMATCH"
        lines.append(f"  {sim:<15} {verdict}; {s['token_interval']:.1f} cycles per token "
                     f"({s['token_interval'] / r['ideal_cycles']:.2f}x ideal), latency {s['cycles_per_token']:.0f}")
    if r.get("hls"):
        h = r["hls"]
        lines.append(f"  HLS C++ (g++)   {'bit-exact' if h['bit_exact'] else 'MISMATCH'} on {h['tokens_checked']} tokens")
    lines += _fpga_lines(Path(rtl_dir))
    return "\n".join(lines)


def _fpga_lines(rtl_dir: Path) -> list[str]:
    """The `make fpga` figures (fpga_report.json), when that has been run on this design."""
    from .fpga import current_digest, read_report

    f = read_report(rtl_dir)
    lines = []
    if f and f.get("rtl_digest") and f["rtl_digest"] != current_digest(rtl_dir):
        return [f"  {'FPGA':<15} fpga_report.json is for an older version of this RTL; run `make fpga` again"]
    if f.get("utilization"):
        u = f["utilization"]
        use = "   ".join(f"{k} {u[k]['used']:,}/{u[k]['available']:,}" for k in
                        ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD") if k in u)
        lines.append(f"  {f['device']:<15} {use}" + ("   (synthesis only)" if f.get("io") == "not placed" else ""))
        if f.get("fmax_mhz"):
            speed = f"; {f['tokens_per_s']:,.0f} tokens/s" if f.get("tokens_per_s") else ""
            lines.append(f"  {'':<15} Fmax {f['fmax_mhz']:.1f} MHz (target {f['freq_target_mhz']:g} MHz "
                         f"{'met' if f['timing_met'] else 'NOT met'}){speed}")
    x = f.get("xilinx")
    if x:
        lines.append(f"  XC7VX485T       {'fits' if x['fits'] else 'does NOT fit'} (yosys estimate, limiting "
                     f"{x['limiting_resource']} {x['limiting_fraction']:.1%})")
    return lines


# --- helpers -----------------------------------------------------------------


def _plain(result) -> dict:
    d = asdict(result)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _read_json(path: Path, fix: str) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path} not found; {fix}")
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _update_report(rtl_dir: Path, change) -> None:
    report = _read_json(rtl_dir / REPORT, "run `make rtl` first")
    change(report)
    _write_json(rtl_dir / REPORT, report)
