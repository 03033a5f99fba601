"""HLS C++ of a :class:`~ccflow.cnn_quantize.CnnDesign`: render, compile with g++, check against CnnGolden.

The templates in ``hls/cnn/`` become, in ``out_dir``: ``ccflow_config.h`` (sizes, formats, types),
``ccflow_rom.inc`` (the ROM contents: the data of the Verilog ``.mem`` files, from the same
:mod:`ccflow.cnn_generate` tables), ``ccflow.h``/``ccflow.cpp`` (the top function
``ccflow_classify(pixels, logits, sat_count)``), ``tb_main.cpp`` (the C simulation: pixels in,
logits out) and ``run_hls.tcl`` (Vitis HLS, untested: no vendor tool here). Compiling and running
reuse :mod:`ccflow.hls`.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cnn_generate import block_descriptors, layer_descriptors, rtl_context, tap_rows
from .cnn_quantize import CnnDesign, CnnGolden
from .hls import EXECUTABLE, REPO_ROOT, HlsError, _ctype, _flat, _init, _stale, build_hls, render_hls

TEMPLATE_DIR = REPO_ROOT / "hls" / "cnn"


@dataclass(frozen=True)
class CnnHlsResult:
    images_checked: int  # images compared (up to and including the first mismatch)
    bit_exact: bool
    first_mismatch: str | None
    csim_seconds: float = 0.0


def cnn_hls_context(design: CnnDesign) -> dict:
    fmt, arr = design.array.formats, design.array
    taps, tap_row = tap_rows(design)
    flat = lambda v: _flat(np.asarray(v).reshape(-1))  # noqa: E731
    rom = {
        "tile_weight": _init(design.tile_weight, "tile"), "tile_sel": _init(design.tile_sel, "tile"),
        "tile_taps": flat(tap_row), "tile_block": flat(design.tile_block),
        "tile_first": ", ".join("true" if v else "false" for v in design.tile_first),
        "tile_last": ", ".join("true" if v else "false" for v in design.tile_last),
        "tile_split": flat(design.tile_split), "taps": _init(taps, "taps row"),
        "block_bias": _init(design.block_bias, "block"), "block_shift": _init(design.block_shift, "block"),
        "blocks": _init(block_descriptors(design), "block"), "layers": _init(layer_descriptors(design), "layer"),
    }
    types = {"wgt": _ctype(fmt.weight_bits, True), "sel": _ctype(arr.alpha, False), "act": _ctype(fmt.act_bits, True),
             "acc": _ctype(fmt.acc_bits, True)}
    return {"c": rtl_context(design), "t": types, "rom": rom}


def render_cnn_hls(design: CnnDesign, out_dir: str | Path) -> list[Path]:
    return render_hls(design, out_dir, TEMPLATE_DIR, context=cnn_hls_context(design))


def check_cnn_hls(design: CnnDesign, out_dir: str | Path, images) -> CnnHlsResult:
    """Build (if stale) and run the C simulation on ``images`` ([N, C, H, W] in [0, 1]); every image's
    logits and saturation count must equal CnnGolden's (pixel conversion excluded)."""
    out_dir = Path(out_dir)
    images = np.asarray(images, dtype=np.float64)
    exe = build_hls(out_dir) if _stale(out_dir) else out_dir / EXECUTABLE
    golden = CnnGolden(design)
    pixels = golden.input(images).reshape(len(images), -1)
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe)], input="\n".join(" ".join(map(str, p)) for p in pixels.tolist()) + "\n",
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise HlsError(f"the C simulation {exe} failed (exit status {proc.returncode}): "
                       f"{proc.stderr.strip() or '(no message)'}")
    head, _, body = proc.stdout.partition("\n")
    fields = head.split()
    if not fields or fields[0] != "ccflow-hls-cnn-csim":
        raise HlsError(f"the C simulation {exe} printed an unexpected first line: {head!r}")
    header = {k: int(v) for k, v in (f.split("=", 1) for f in fields[1:])}
    expect = {"classes": design.classes, "in_words": pixels.shape[1], "tiles": design.n_tiles,
              "blocks": design.n_blocks}
    differ = [f"{k} {header.get(k)} vs {v}" for k, v in expect.items() if header.get(k) != v]
    if differ:
        return CnnHlsResult(0, False, f"the C++ in {out_dir} was rendered for another design ({', '.join(differ)})",
                            seconds)
    values = np.array(body.split(), dtype=np.int64).reshape(-1, design.classes + 1)
    if len(values) != len(images):
        raise HlsError(f"the C simulation {exe} answered {len(values)} of {len(images)} images")
    for i, image in enumerate(images):
        golden.sat.reset()
        want = golden.run(image[None])[0]
        sat = golden.sat.total - golden.sat.by_site.get("input", 0)
        got = values[i, 1:]
        if not np.array_equal(got, want):
            v = int(np.flatnonzero(got != want)[0])
            return CnnHlsResult(i + 1, False, f"image {i}: logit {v} is {got[v]} in C++, {want[v]} in the golden "
                                              "model", seconds)
        if values[i, 0] != sat:
            return CnnHlsResult(i + 1, False, f"image {i}: {values[i, 0]} saturations in C++, {sat} in the golden "
                                              f"model ({golden.sat.by_site})", seconds)
    return CnnHlsResult(len(images), True, None, seconds)
