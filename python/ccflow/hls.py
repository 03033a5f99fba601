"""HLS C++ of a :class:`~ccflow.design.Design`: render, compile with g++, check against the golden model.

The templates in ``hls/`` (docs/hls.md) become, in ``out_dir``:

* ``ccflow_config.h`` -- array size, number formats, layout sizes as ``constexpr``, the C++ types;
* ``ccflow_rom.inc``  -- the ROM contents (the data of the Verilog ``.mem`` files) as
  function-local ``static const`` arrays, included inside the top function;
* ``ccflow.h`` / ``ccflow.cpp`` -- the top function
  ``void ccflow_step(tok_t token, bool reset, logit_t logits[VOCAB], sat_count_t *sat_count)``;
* ``tb_main.cpp`` -- the C-simulation test bench (token ids in, logits and saturation count out);
* ``run_hls.tcl`` -- a Vitis HLS project script (untested: no vendor tool here).

:func:`build_hls` compiles the C simulation with g++ (warnings are errors) and
:func:`check_hls` runs it over a token stream and compares every step's logits
and the saturation count with :class:`~ccflow.golden.GoldenModel`.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from .design import Design
from .golden import GoldenModel

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO_ROOT / "hls"
SOURCES = ("ccflow.cpp", "tb_main.cpp")
HEADERS = ("ccflow.h", "ccflow_config.h", "ccflow_rom.inc")
EXECUTABLE = "ccflow_csim"
CXX = "g++"
CXXFLAGS = ("-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas")


class HlsError(RuntimeError):
    """Rendering, compiling or running the HLS C++ failed; the message says where and why."""


@dataclass(frozen=True)
class HlsResult:
    tokens_checked: int  # steps compared (up to and including the first mismatch)
    bit_exact: bool
    first_mismatch: str | None  # None when bit exact
    saturations: int = 0  # the C simulation's saturation count after the last step checked
    csim_seconds: float = 0.0  # wall time of the C simulation run (tokens_checked / csim_seconds = tokens/s)


# --- rendering ----------------------------------------------------------------


def render_hls(design: Design, out_dir: str | Path, template_dir: str | Path | None = None,
               context: dict | None = None) -> list[Path]:
    """Render every template of ``template_dir`` (default ``hls/``) for ``design`` into ``out_dir``.

    ``*.j2`` files are rendered (StrictUndefined) to the name without ``.j2``;
    other files are copied. ``context``: the templates' variables (default :func:`hls_context`;
    the CNN's come from ``ccflow.cnn_hls``). Returns the written paths.
    """
    template_dir = Path(template_dir) if template_dir is not None else TEMPLATE_DIR
    out_dir = Path(out_dir)
    if not template_dir.is_dir():
        raise HlsError(f"HLS template folder {template_dir} is missing")
    files = sorted(p for p in template_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise HlsError(f"HLS template folder {template_dir} is empty")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    context = hls_context(design) if context is None else context
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in files:
        if src.suffix == ".j2":
            text = _render(env, template_dir, src.name, context)
            dst = out_dir / src.name[: -len(".j2")]
            dst.write_text(text)
        else:
            dst = out_dir / src.name
            shutil.copyfile(src, dst)
        written.append(dst)
    return written


def _render(env: jinja2.Environment, template_dir: Path, name: str, context: dict) -> str:
    try:
        return env.get_template(name).render(**context)
    except jinja2.UndefinedError as e:
        line = _template_line(e, template_dir / name)
        where = f"{name}:{line}" if line else name
        raise HlsError(f"HLS template {where}: undefined variable: {e.message}") from None
    except jinja2.TemplateSyntaxError as e:
        raise HlsError(f"HLS template {e.name or name}:{e.lineno}: syntax error: {e.message}") from None


def _template_line(error: BaseException, path: Path) -> int | None:
    """The template line of the innermost traceback frame inside the template (jinja maps them)."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return line


def _ctype(n: int, signed: bool) -> str:
    """Smallest <cstdint> type holding ``n`` bits (signed) or values 0..n (unsigned: n is a count)."""
    if signed:
        for bits, name in ((8, "int8_t"), (16, "int16_t"), (32, "int32_t"), (64, "int64_t")):
            if n <= bits:
                return name
    else:
        for bits, name in ((8, "uint8_t"), (16, "uint16_t"), (32, "uint32_t"), (64, "uint64_t")):
            if n < (1 << bits):
                return name
    raise HlsError(f"no C++ integer type for {'signed ' if signed else ''}{n}")


def _init(values: np.ndarray, label: str | None = None) -> str:
    """C initializer body: one line per entry of axis 0, nested braces below it."""
    values = np.asarray(values)
    is_bool = values.dtype == bool
    lines = []
    for i, entry in enumerate(values.tolist()):
        text = _braces(entry, is_bool)
        lines.append(f"  {text}," + (f"  // {label} {i}" if label else ""))
    return "\n".join(lines)


def _braces(x, is_bool: bool) -> str:
    if isinstance(x, list):
        if x and isinstance(x[0], list):
            return "{" + ",".join(_braces(v, is_bool) for v in x) + "}"
        if is_bool:
            return "{" + ",".join("true" if v else "false" for v in x) + "}"
        return "{" + ",".join(map(str, x)) + "}"
    if is_bool:
        return "true" if x else "false"
    return str(x)


def _flat(values) -> str:
    return ", ".join(str(int(v)) for v in values)


def hls_context(design: Design) -> dict:
    """Everything the templates read: the design, its array and formats, derived sizes, ROM text."""
    arr, fmt = design.array, design.array.formats
    nt, nb = design.n_tiles, design.n_blocks
    lstm = design.lstm_layers
    mats = design.matrices
    max_shift = int(design.block_shift.max(initial=0))
    if design.block_shift.min(initial=0) < 0 or max_shift > 62:
        raise HlsError(f"block shifts must be in 0..62, got {design.block_shift.min()}..{max_shift}")
    widths = {
        "addr": max(1, math.ceil(math.log2(max(design.act_size, 2)))),
        "shift": max(1, max(fmt.max_shift, max_shift).bit_length()),
        "tok": max(1, math.ceil(math.log2(max(design.vocab_size, 2)))),
    }
    types = {
        "tok": _ctype(design.vocab_size, False),
        "wgt": _ctype(fmt.weight_bits, True),
        "sel": _ctype(arr.alpha, False),
        "addr": _ctype(design.act_size, False),
        "shift": _ctype(max(fmt.max_shift, max_shift) + 1, False),
        "act": _ctype(fmt.act_bits, True),
        "acc": _ctype(fmt.acc_bits, True),
        "cell": _ctype(fmt.cell_bits, True),
        "tile": _ctype(nt, False),
        "split": _ctype(arr.cols, False),
        "block": _ctype(nb, False),
    }
    rom = {
        "tile_weight": _init(design.tile_weight, "tile"),
        "tile_sel": _init(design.tile_sel, "tile"),
        "tile_addr": _init(design.tile_addr, "tile"),
        "tile_block": _init(design.tile_block),
        "tile_first": _init(design.tile_first.astype(bool)),
        "tile_last": _init(design.tile_last.astype(bool)),
        "tile_split": _init(design.tile_split),
        "mat_tile_start": _flat(m.tile_start for m in mats),
        "mat_n_tiles": _flat(m.n_tiles for m in mats),
        "block_bias": _init(design.block_bias, "block"),
        "block_shift": _init(design.block_shift, "block"),
        "mat_block_start": _flat(m.block_start for m in mats),
        "mat_n_blocks": _flat(m.n_blocks for m in mats),
        "mat_hidden": _flat(m.hidden for m in mats),
        "mat_out_base": _flat(m.out_base for m in mats),
        "mat_cell_base": _flat(m.cell_base for m in mats),
        "embedding": _init(design.embedding, "token"),
        "lut_sigmoid": _init(design.lut_sigmoid),
        "lut_tanh": _init(design.lut_tanh),
    }
    return {
        "design": design,
        "array": arr,
        "fmt": fmt,
        "widths": widths,
        "types": types,
        "rom": rom,
        "n_lstm": len(lstm),
        "max_hidden": max(m.hidden for m in lstm),
        "max_tiles_per_matrix": max(m.n_tiles for m in mats),
        "avg_tiles_per_matrix": max(1, round(nt / len(mats))),
        "max_blocks_per_matrix": max(m.n_blocks for m in mats),
    }


# --- building -------------------------------------------------------------------


def build_hls(out_dir: str | Path, cxx: str = CXX) -> Path:
    """Compile the rendered C++ in ``out_dir`` into the C-simulation executable; returns its path."""
    out_dir = Path(out_dir)
    missing = [f for f in SOURCES + HEADERS if not (out_dir / f).is_file()]
    if missing:
        raise HlsError(f"{out_dir} lacks {', '.join(missing)}; render the HLS C++ first (render_hls)")
    if shutil.which(cxx) is None:
        raise HlsError(f"{cxx} is not on PATH; the HLS C simulation needs a C++17 compiler (apt-get install g++)")
    exe = out_dir / EXECUTABLE
    cmd = [cxx, *CXXFLAGS, "-I", str(out_dir), *(str(out_dir / s) for s in SOURCES), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip()
        lines = message.splitlines()
        if len(lines) > 60:
            message = "\n".join(lines[:60] + [f"... ({len(lines) - 60} more lines)"])
        raise HlsError(f"g++ could not compile the HLS C++ in {out_dir}:\n{message}")
    return exe


def _stale(out_dir: Path) -> bool:
    exe = out_dir / EXECUTABLE
    if not exe.is_file():
        return True
    built = exe.stat().st_mtime_ns
    return any((out_dir / f).stat().st_mtime_ns >= built for f in SOURCES + HEADERS if (out_dir / f).exists())


# --- running and checking -----------------------------------------------------------


def run_csim(exe: str | Path, tokens, reset_at=(), timeout: float | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Run the C simulation on ``tokens`` (resetting before the step indices in ``reset_at``).

    Returns (header fields, logits [steps, vocab], saturation counts [steps]).
    """
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    resets = set(int(i) for i in reset_at)
    parts = []
    for i, t in enumerate(tokens.tolist()):
        if i in resets:
            parts.append("-1")
        parts.append(str(t))
    proc = subprocess.run([str(exe)], input="\n".join(parts) + "\n", capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise HlsError(f"the C simulation {exe} failed (exit status {proc.returncode}): "
                       f"{proc.stderr.strip() or '(no message)'}")
    head, _, body = proc.stdout.partition("\n")
    fields = head.split()
    if not fields or fields[0] != "ccflow-hls-csim":
        raise HlsError(f"the C simulation {exe} printed an unexpected first line: {head!r}")
    header = {k: int(v) for k, v in (f.split("=", 1) for f in fields[1:])}
    vocab = header["vocab"]
    values = np.array(body.split(), dtype=np.int64)
    if values.size != len(tokens) * (vocab + 1):
        raise HlsError(f"the C simulation {exe} printed {values.size} numbers for {len(tokens)} steps; "
                       f"expected {len(tokens) * (vocab + 1)}")
    values = values.reshape(len(tokens), vocab + 1)
    return header, values[:, 1:], values[:, 0]


def check_hls(design: Design, out_dir: str | Path, tokens, reset_at=()) -> HlsResult:
    """Run the C simulation in ``out_dir`` over ``tokens`` and compare it with the golden model.

    Builds the executable first if it is missing or older than the rendered sources
    (the sources are not re-rendered: what is checked is the C++ in ``out_dir``).
    Every step's logits and the saturation count since the last reset must be equal;
    ``reset_at`` lists step indices before which both models are reset.
    """
    out_dir = Path(out_dir)
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if tokens.size == 0:
        raise ValueError("check_hls needs at least one token")
    if tokens.min() < 0 or tokens.max() >= design.vocab_size:
        raise ValueError(f"token ids must be in 0..{design.vocab_size - 1}, got {tokens.min()}..{tokens.max()}")
    exe = build_hls(out_dir) if _stale(out_dir) else out_dir / EXECUTABLE
    t0 = time.perf_counter()
    header, logits, sats = run_csim(exe, tokens, reset_at)
    seconds = time.perf_counter() - t0

    expect = {"vocab": design.vocab_size, "emsize": design.emsize, "act_size": design.act_size,
              "tiles": design.n_tiles, "blocks": design.n_blocks}
    differ = [f"{k} {header.get(k)} vs {v}" for k, v in expect.items() if header.get(k) != v]
    if differ:
        return HlsResult(0, False, f"the C++ in {out_dir} was rendered for another design "
                                   f"({', '.join(differ)} in C++ vs design)", 0, seconds)

    golden = GoldenModel(design)
    resets = set(int(i) for i in reset_at)
    for i, t in enumerate(tokens.tolist()):
        if i in resets:
            golden.reset()
        want = golden.step([t])[0]
        bad = np.flatnonzero(logits[i] != want)
        if len(bad):
            v = int(bad[0])
            return HlsResult(i + 1, False, f"step {i} (token {t}): logit {v} is {logits[i, v]} in C++, "
                                           f"{want[v]} in the golden model ({len(bad)} of {len(want)} logits differ)",
                             int(sats[i]), seconds)
        if sats[i] != golden.sat.total:
            return HlsResult(i + 1, False, f"step {i} (token {t}): saturation count is {sats[i]} in C++, "
                                           f"{golden.sat.total} in the golden model ({golden.sat.by_site})",
                             int(sats[i]), seconds)
    return HlsResult(len(tokens), True, None, int(sats[-1]), seconds)
