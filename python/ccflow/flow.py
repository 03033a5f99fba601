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


class FlowError(ValueError):
    """A stage that cannot run or whose check failed; the message names the file or setting and the fix."""


def build_rtl(checkpoint: str | Path, out_dir: str | Path, overrides=(), streams: int = 16,
              stimulus_tokens: int = 64, score: bool = True, threads: int | None = None,
              stimulus_images: int = 8) -> dict:
    """Quantize a trained model, render Verilog + HLS + ROMs, pick the held-out stimulus, score BPC.

    Everything is checked and computed before ``out_dir`` is touched; the folder is then replaced whole.
    ``threads``: CPU threads for scoring (default: :func:`ccflow.runtime.choose_threads`).
    """
    import torch

    from .checkpoint import load_model
    from .corpus import load_corpus
    from .evaluate import evaluate
    from .generate import render_rtl
    from .golden import fixed_point_bpc
    from .hls import render_hls
    from .outdir import check_replaceable, staged_dir
    from .quantize import FloatModel, quantize
    from .runtime import choose_threads, set_threads

    _check(stimulus_tokens >= 1, f"--tokens {stimulus_tokens}: the stimulus needs at least 1 token; "
           "give a positive count (default 64)")
    _check(streams >= 1, f"--streams {streams}: scoring needs at least 1 stream; give a positive count (default 16)")
    choose_threads(threads)
    out_dir = check_replaceable(out_dir, REPORT)
    trained = load_model(checkpoint)
    if trained.config.model.arch != "lstm":
        return _build_cnn_rtl(trained, checkpoint, out_dir, overrides, stimulus_images, score, threads)
    set_threads(threads, sum(p.numel() for p in trained.model.parameters()))
    cfg: Config = trained.config.replace(overrides)
    design = quantize(FloatModel.from_torch(trained.model), cfg.array, trained.packings)
    corpus = load_corpus(cfg.data.corpus, vocab=trained.vocab)  # before writing anything: it may have moved
    test = corpus.test
    _check(len(test) >= 2, f"the test split of {corpus.name} has {len(test)} tokens; scoring and simulation need "
           "at least 2: use a larger corpus (--set data.corpus=...)")
    stimulus = [int(t) for t in test[:stimulus_tokens]]

    report = {
        "config": cfg.name, "corpus": corpus.name, "checkpoint": str(checkpoint), "vocab": corpus.ntokens,
        "array": f"{cfg.array.rows} x {cfg.array.cols} MX cells, alpha {cfg.array.alpha}",
        "tiles": design.n_tiles, "dense_cells": design.dense_cells, "packed_cells": design.packed_cells,
        "nnz": design.nnz, "utilization": design.nnz / design.packed_cells,
        "ideal_cycles": design.ideal_cycles, "quant_saturations": design.quant_saturations,
        "matrices": [asdict(m) for m in design.matrices], "sims": {}, "hls": None,
    }
    if score:
        streams = min(streams, len(test) // 2)
        with torch.no_grad():
            float_bpc = evaluate(trained.model, test, streams, cfg.train.bptt)
        report.update(float_bpc=float_bpc, fixed_bpc=fixed_point_bpc(design, test, streams, progress=True),
                      bpc_streams=streams, test_tokens=len(test))
    # Built beside out_dir and swapped in whole: a failure above or here leaves the previous design as it was.
    # The simulator build cache and the FPGA results (checked against the RTL's digest) carry over.
    with staged_dir(out_dir, REPORT, keep=("sim", "fpga", "fpga_report.json")) as tmp:
        render_rtl(design, tmp)
        render_hls(design, tmp / "hls")
        _write_json(tmp / STIMULUS, {"split": "test", "tokens": stimulus, "text": corpus.decode(stimulus)})
        _write_json(tmp / REPORT, report)
    return report


def _build_cnn_rtl(trained, checkpoint, out_dir: Path, overrides, stimulus_images: int, score: bool,
                   threads: int | None) -> dict:
    """build_rtl for a CNN: quantize, render the CNN RTL, keep test images as the stimulus, score accuracy."""
    import numpy as np
    import torch

    from .cnn import FloatCnn
    from .cnn_generate import render_cnn_rtl
    from .cnn_hls import render_cnn_hls
    from .cnn_quantize import fixed_point_accuracy, quantize_cnn
    from .cnn_train import evaluate_images
    from .images import ImageError, load_images
    from .outdir import staged_dir
    from .quantize import QuantizeError
    from .runtime import set_threads

    _check(stimulus_images >= 1, f"--images {stimulus_images}: the stimulus needs at least 1 image; give a positive "
           "count (default 8)")
    set_threads(threads, sum(p.numel() for p in trained.model.parameters()))
    cfg: Config = trained.config.replace(overrides)
    try:
        design = quantize_cnn(FloatCnn.from_torch(trained.model), cfg.array, trained.packings)
        images = load_images(cfg.data.corpus)
    except (QuantizeError, ImageError) as e:
        raise FlowError(str(e)) from None
    _check(images.shape == tuple(trained.model.in_shape) and images.classes == trained.model.classes,
           f"{checkpoint}: the model takes {tuple(trained.model.in_shape)} images of {trained.model.classes} classes, "
           f"{images.name} has {images.shape} of {images.classes}; use the data it was trained on")
    n = min(stimulus_images, len(images.test_y))
    report = {
        "kind": "cnn", "config": cfg.name, "data": images.name, "checkpoint": str(checkpoint),
        "classes": images.classes, "image_shape": list(images.shape),
        "array": f"{cfg.array.rows} x {cfg.array.cols} MX cells, alpha {cfg.array.alpha}",
        "tiles": design.n_tiles, "dense_tiles": _dense_tiles(design), "dense_cells": design.dense_cells,
        "dense_macs": sum(m.dense_cells * layer.positions for m, layer in
                          zip((design.matrices[lay.matrix] for lay in design.layers), design.layers)),
        "packed_cells": design.packed_cells, "nnz": design.nnz, "utilization": design.nnz / design.packed_cells,
        "quant_saturations": design.quant_saturations, "matrices": [asdict(m) for m in design.matrices],
        "sims": {}, "hls": None,
    }
    if score:
        with torch.no_grad():
            _, float_acc = evaluate_images(trained.model, images.test_x, images.test_y)
        report.update(float_accuracy=float_acc,
                      fixed_accuracy=fixed_point_accuracy(design, images.test_x, images.test_y),
                      test_images=len(images.test_y))
    stimulus = {"split": "test", "images": np.asarray(images.test_x[:n], dtype=np.float64).tolist(),
                "labels": [int(y) for y in images.test_y[:n]]}
    with staged_dir(out_dir, REPORT, keep=("sim", "fpga", "fpga_report.json")) as tmp:
        render_cnn_rtl(design, tmp)
        render_cnn_hls(design, tmp / "hls")
        _write_json(tmp / STIMULUS, stimulus)
        _write_json(tmp / REPORT, report)
    return report


def _dense_tiles(design) -> int:
    """Tiles the same matrices take unpacked (every block's columns dealt COLS at a time): the paper's
    "fraction of the dense tiles" is tiles / this."""
    arr = design.array
    return sum(-(-m.rows // arr.rows) * -(-m.in_size // arr.cols) for m in design.matrices)


def is_cnn(rtl_dir: Path) -> bool:
    from .design import design_kind

    try:
        return design_kind(rtl_dir) == "cnn"
    except (OSError, ValueError) as e:
        raise FlowError(f"{Path(rtl_dir) / 'design.npz'} cannot be read ({e}); run `ccflow rtl` (make rtl) again") \
            from None


def simulate(rtl_dir: str | Path, sim: str = "icarus", tokens: int | None = None) -> dict:
    """Run the top-level cocotb bench over the stored stimulus; raise if not bit-exact. ``tokens``: the
    first N tokens (LSTM) or images (CNN) of it."""
    from .simulate import run_cnn_top, run_top

    rtl_dir = require_rtl(rtl_dir)
    if is_cnn(rtl_dir):
        images = _first_tokens(_stimulus_images(rtl_dir), tokens, rtl_dir)
        result = run_cnn_top(rtl_dir, images, sim=sim)
        _update_report(rtl_dir, lambda r: r["sims"].__setitem__(sim, _plain(result)))
        if not result.passed:
            raise FlowError(_sim_failure(sim, result))
        return _plain(result)
    stim = _stimulus(rtl_dir)
    stim = _first_tokens(stim, tokens, rtl_dir)
    result = run_top(rtl_dir, sim=sim, tokens=stim)
    _update_report(rtl_dir, lambda r: r["sims"].__setitem__(sim, _plain(result)))
    if not result.passed:
        raise FlowError(_sim_failure(sim, result))
    return _plain(result)


def check_hls(rtl_dir: str | Path, tokens: int | None = None) -> dict:
    """Compile the HLS C++ with g++ and compare its C simulation with the golden model."""
    from .design import Design
    from .hls import check_hls as run_check

    rtl_dir = require_rtl(rtl_dir)
    if is_cnn(rtl_dir):
        return _check_cnn_hls(rtl_dir, tokens)
    stim = _stimulus(rtl_dir)
    stim = _first_tokens(stim, tokens, rtl_dir)
    result = run_check(Design.load(rtl_dir), rtl_dir / "hls", stim)
    _update_report(rtl_dir, lambda r: r.__setitem__("hls", _plain(result)))
    if not result.bit_exact:
        raise FlowError(f"HLS C simulation differs from the golden model: {result.first_mismatch}")
    return _plain(result)


def _check_cnn_hls(rtl_dir: Path, images: int | None) -> dict:
    """check_hls for a CNN: the C simulation against CnnGolden on the stimulus images."""
    from .cnn_hls import check_cnn_hls
    from .cnn_quantize import CnnDesign

    stim = _first_tokens(_stimulus_images(rtl_dir), images, rtl_dir)
    result = check_cnn_hls(CnnDesign.load(rtl_dir), rtl_dir / "hls", stim)
    _update_report(rtl_dir, lambda r: r.__setitem__("hls", _plain(result)))
    if not result.bit_exact:
        raise FlowError(f"HLS C simulation differs from the golden model: {result.first_mismatch}")
    return _plain(result)


def _stimulus_images(rtl_dir: Path) -> list:
    images = _read_json(rtl_dir / STIMULUS, "run `make rtl` first").get("images")
    _check(isinstance(images, list) and len(images) > 0,
           f"{rtl_dir / STIMULUS} holds no images; run `ccflow rtl` (make rtl) again to rewrite it")
    return images


def summary(rtl_dir: str | Path) -> str:
    rtl_dir = require_rtl(rtl_dir)
    r = _read_json(rtl_dir / REPORT, "run `make rtl` first")
    try:
        return _summary(rtl_dir, r)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise FlowError(f"{Path(rtl_dir) / REPORT} is incomplete or damaged ({type(e).__name__}: {e}); "
                        "run `ccflow rtl` (make rtl) again to rewrite it") from None


def _summary(rtl_dir: str | Path, r: dict) -> str:
    if r.get("kind") == "cnn":
        return _cnn_summary(rtl_dir, r)
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
        timed = (f"{s['token_interval']:.1f} cycles per token ({s['token_interval'] / r['ideal_cycles']:.2f}x ideal)"
                 if s.get("token_interval") else "too few stall-free tokens to time")
        lines.append(f"  {sim:<15} {verdict}; {timed}, latency {s['cycles_per_token']:.0f}")
    if r.get("hls"):
        h = r["hls"]
        lines.append(f"  HLS C++ (g++)   {'bit-exact' if h['bit_exact'] else 'MISMATCH'} on {h['tokens_checked']} tokens")
    lines += _fpga_lines(Path(rtl_dir))
    return "\n".join(lines)


def _cnn_summary(rtl_dir: str | Path, r: dict) -> str:
    lines = [f"ccflow summary ({r['config']}, CNN, {Path(rtl_dir)})",
             f"  data            {r['data']} ({r['classes']} classes, images {' x '.join(map(str, r['image_shape']))})"]
    if "float_accuracy" in r:
        lines.append(f"  test accuracy   float {r['float_accuracy']:.2%}   fixed point {r['fixed_accuracy']:.2%}   "
                     f"({r['test_images']} images)")
    lines += [
        f"  array           {r['array']}",
        f"  cells           dense {r['dense_cells']:,}   packed {r['packed_cells']:,}   "
        f"({r['dense_cells'] / r['packed_cells']:.2f}x fewer)",
        f"  utilization     {r['utilization']:.1%} ({r['nnz']:,} nonzero weights)",
        f"  tiles           {r['tiles']} ({r['tiles'] / r['dense_tiles']:.3f} of the {r['dense_tiles']} dense tiles)",
    ]
    for sim, s in sorted(r["sims"].items()):
        verdict = f"bit-exact on {s['images_checked']} images" if s["passed"] else "MISMATCH"
        timed = (f"{s['cycles_per_image']:.0f} cycles per image" if s.get("cycles_per_image")
                 else "too few stall-free images to time")
        lines.append(f"  {sim:<15} {verdict}; {timed}, latency {s['latency']:.0f}")
    if r.get("hls"):
        h = r["hls"]
        lines.append(f"  HLS C++ (g++)   {'bit-exact' if h['bit_exact'] else 'MISMATCH'} on {h['images_checked']} images")
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
            speed = (f"; {f['tokens_per_s']:,.0f} tokens/s" if f.get("tokens_per_s") else
                     f"; {f['images_per_s']:,.0f} images/s" if f.get("images_per_s") else "")
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


def require_rtl(rtl_dir: str | Path) -> Path:
    """``rtl_dir`` if it is a folder written by ``ccflow rtl``, else :class:`FlowError` naming the fix."""
    rtl_dir = Path(rtl_dir)
    _check(rtl_dir.exists(), f"--rtl {rtl_dir} does not exist; give the folder written by `ccflow rtl --out` "
           "(make rtl)")
    _check(rtl_dir.is_dir(), f"--rtl {rtl_dir} is a file; give the folder written by `ccflow rtl --out`")
    from .generate import rtl_module

    top = rtl_module(rtl_dir)
    _check((rtl_dir / f"{top}.v").is_file(), f"--rtl {rtl_dir} holds no generated design (no {top}.v); "
           "give the folder written by `ccflow rtl --out` (make rtl)")
    return rtl_dir


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise FlowError(message)


def _first_tokens(stim: list, tokens: int | None, rtl_dir: Path) -> list:
    if tokens is not None:
        _check(tokens >= 1, f"--tokens {tokens}: simulate at least 1 token (or leave --tokens out for all {len(stim)})")
        stim = stim[:tokens]
    _check(bool(stim), f"{rtl_dir / STIMULUS} holds no tokens; run `ccflow rtl --tokens N` with N >= 1")
    return stim


def _sim_failure(sim: str, result) -> str:
    """One line: which ROM the simulator could not read (as its $readmemh said), else the bench's verdict."""
    from .simulate import readmem_errors

    errors = readmem_errors(Path(result.log_path))
    if errors:
        return (f"{sim}: a ROM could not be read ({errors[0]}); run `ccflow rtl` (make rtl) again to rewrite "
                f"the .mem files; log {result.log_path}")
    return f"{sim}: hardware differs from the golden model ({result.message or 'no message'}); see {result.log_path}"


def _stimulus(rtl_dir: Path) -> list[int]:
    stim = _read_json(rtl_dir / STIMULUS, "run `make rtl` first").get("tokens")
    _check(isinstance(stim, list) and all(isinstance(t, int) for t in stim),
           f"{rtl_dir / STIMULUS} holds no token list; run `ccflow rtl` (make rtl) again to rewrite it")
    return stim


def _read_json(path: Path, fix: str) -> dict:
    if path.is_dir() and (path / REPORT).is_file():
        path = path / REPORT
    _check(path.parent.is_dir(), f"{path.parent} is not a folder; give the rtl folder written by `ccflow rtl --out`")
    _check(path.is_file(), f"{path} not found; {fix}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowError(f"{path} is not valid JSON ({e}); run `make rtl` again to rewrite it") from None
    _check(isinstance(data, dict), f"{path} does not hold what `ccflow rtl` wrote there; run `make rtl` again to "
           "rewrite it")
    return data


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _update_report(rtl_dir: Path, change) -> None:
    report = _read_json(rtl_dir / REPORT, "run `make rtl` first")
    change(report)
    _write_json(rtl_dir / REPORT, report)
