"""Render the Verilog of one :class:`~ccflow.design.Design` and write its ROM files.

``render_rtl(design, out_dir)`` writes, into ``out_dir``:

* ``array_config.json`` + ``design.npz`` (``Design.save``): what the test benches
  and the golden model load -- never the ``.mem`` files;
* every template of ``rtl_templates/`` (Jinja2, ``StrictUndefined``): one module
  per ``.v`` file, each taking the sizes it uses as parameters whose defaults are
  this design's (no header, no `` `define``);
* the ``$readmemh`` files laid out exactly as docs/hardware.md's table says
  (one word per line, hex, most significant digit first, field 0 in the least
  significant bits).

* ``files.f`` and ``ccflow.core`` (FuseSoC): the rtl folder is a drop-in IP.

Everything a template needs is in :func:`rtl_context`: the array and number
formats, the model sizes and the widths derived from them -- no layout: where
matrices, row blocks and LSTM units live is data in the descriptor ROMs
(:func:`block_descriptors`, :func:`matrix_descriptors`, ``tiles.mem``), so the
Verilog depends only on the array configuration and the model's sizes. Widths
that are not fixed by docs/hardware.md are chosen here:

==================  =========================================================
``prefix``          ``ArrayConfig.module_prefix``: before every module name (and its file name)
``sel_bits``        ``ArrayConfig.sel_bits`` (log2 alpha, at least 1)
``bank_bits``       clog2(alpha): the act bank (address mod alpha)
``local_bits``      clog2(act_size / alpha): a word in a bank (``addrs.mem``)
``act_bank_bits``   (2 << local_bits) x act_bits: one copy of an act bank, both copies of every word
``act_lut_ram``     act banks in LUT RAM when act_bank_bits is at most :data:`ACT_LUT_RAM_BITS`,
                    else block RAM (ccflow_act_mem, ccflow_ram's LUT_RAM)
``shift_bits``      bits of max(max_shift, largest row shift): ``shift.mem``
``bias_bits``       signed bits of the largest bias (at most acc_bits): ``bias.mem``, sign-extended
                    to the accumulator (a 32-row block's bias word sets the ROM's block-RAM width)
``block_bits``      clog2(n_blocks): the block field of ``tiles.mem``
``split_bits``      bits of cols: the split field of ``tiles.mem`` (1..cols)
``psum_bits``       weight + act + clog2(cols) + 1: an exact in-tile row sum
``tree_stages``     max(1, clog2(cols)): registered adder levels of a row sum
``tag_bits``        clog2(layers + 2): token tags, one per token with uncounted saturations
``cell_stages``     :data:`CELL_STAGES`: mx_cell's latency, inputs to product
``array_stages``    1 + cell_stages + tree_stages: mx_array's latency, inputs to row sums
``meta_stage``      3: the cycle a tile's ``tiles.mem`` word arrives (ccflow_tile_rom, addressed in 0)
``acc_stage``       meta_stage + 5 + array_stages: the cycle S of a tile's accumulation (docs/hardware.md)
``tile_rom_rows``   min(tiles, 1024 or 512: :func:`tile_rom_bank_rows`): tiles per bank of ``tiles.mem``/``weights.mem``/``selects.mem``;
                    ``tile_rom_banks`` banks, side by side in a row (:func:`fold_tiles`, ccflow_tile_rom)
``n_addr_rows``     the distinct rows of act words of the tiles (addrs.mem, :func:`address_rows`)
``addr_rom_rows``   min(n_addr_rows, 512): address rows per bank of ``addrs.mem``, ``addr_rom_banks``
                    banks side by side (:func:`fold_tiles`, ccflow_tile_rom; :data:`ADDR_ROM_ROWS`)
``row_group``       4: array rows served by one register copy of the columns' inputs
``mul_stages``      :data:`MUL_STAGES`: ccflow_mul's latency (every multiplier of the design)
``h_stage``         10 + 2 mul_stages: the pointwise unit's stage that writes h (ccflow_pointwise)
==================  =========================================================
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from .arrayconfig import ArrayConfig
from .design import Design

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = Path(os.environ.get("CCFLOW_RTL_TEMPLATES", REPO_ROOT / "rtl_templates"))

# .mem file -> (Design array, bits per field, signed); the word layouts of docs/hardware.md.
MEM_FILES = ("weights.mem", "selects.mem", "addrs.mem", "tiles.mem", "bias.mem", "shift.mem", "blocks.mem",
             "matrices.mem", "embedding.mem", "sigmoid.mem", "tanh.mem")


class RenderError(RuntimeError):
    """A template that cannot be rendered (undefined variable, syntax error) or a value that does not fit."""


# ccflow_mul's pipeline: operands beside the DSP, the product, the product again (ccflow_mul.v.j2)
MUL_STAGES = 3
# mx_cell's pipeline: the select mux, then ccflow_mul (mx_cell.v.j2)
CELL_STAGES = 1 + MUL_STAGES


# Tiles per bank of the per-tile ROMs (tiles, weights, selects: ccflow_tile_rom): 1,024, the depth of one ECP5
# DP16KD port at 18 bits (and of a Xilinx RAMB18 at 18), as yosys's own cascade of these ROMs uses.
# Banks of 512 (the 512 x 36 aspect) double the banks, every one delivering a whole word across the die,
# and stalled nextpnr's router on the whole-matrix `small` design (6,875 tiles, docs/hardware.md), so they
# are used only where they save block RAM: when the tiles past the last full bank of 1,024 fit in 512, a
# last bank of 1,024 would stand more than half empty at the full word's width (`small-cpcc` on 16 x 2:
# 6,604 tiles, 210 DP16KD of the 85F's 208 in banks of 1,024, 200 in banks of 512).
TILE_ROM_ROWS = 1024

# Act banks of at most this many bits (both copies: 2 << local_bits words of act_bits) are LUT RAM, not
# block RAM. A DP16KD holds 18 kbit but serves one bank copy whatever its depth, and there are cols x
# alpha copies: the `small` model on 16 x 2 spends 16 DP16KD on 4-kbit banks (32 on 2-kbit ones at
# alpha 16), the difference between 223 and 207 of the LFE5U-85F's 208 (docs/hardware.md). A 4-kbit
# bank is 64 TRELLIS_DPR16X4 (256 x 16 bit; 0.6% of the 85F's 10,455 each);
# deeper banks (the `ptbc-paper` shape: 1,024 words) keep their block RAM.
ACT_LUT_RAM_BITS = 4096

# Address rows per bank of addrs.mem (ccflow_tile_rom): 512, one DP16KD deep at its widest aspect (512 x 36), so
# no bank is a cascade in depth. Row-block groups keep nearly one row per tile (4,469 rows for 6,469 tiles on the
# trained `small-cpcc` model on 16 x 2): read as one ROM, yosys cascaded it five block RAMs deep and the
# multiplexer after their unregistered outputs, 4.5 ns of routing away, set the design's clock (76.6 MHz,
# docs/hardware.md). Its words are narrow (cols x alpha x local_bits), so banks of 512 do not flood the router
# the way the weight ROM's did.
ADDR_ROM_ROWS = 512


def tile_rom_bank_rows(n_tiles: int) -> int:
    """Tiles per bank of the tile ROMs: TILE_ROM_ROWS, or half of it when the tiles past the last full bank
    fit in half a bank (the one place that decides it; see TILE_ROM_ROWS)."""
    tail = n_tiles % TILE_ROM_ROWS
    return TILE_ROM_ROWS // 2 if n_tiles > TILE_ROM_ROWS and 0 < tail <= TILE_ROM_ROWS // 2 else TILE_ROM_ROWS


def tile_rom_shape(n_tiles: int, bank_rows: int | None = None) -> tuple[int, int]:
    """(rows, banks) of tiles.mem, weights.mem and selects.mem (banks of :func:`tile_rom_bank_rows`), or with
    ``bank_rows`` = ADDR_ROM_ROWS of addrs.mem: tile t is row t % rows of bank t // rows."""
    rows = min(n_tiles, bank_rows or tile_rom_bank_rows(n_tiles))
    return rows, -(-n_tiles // rows)


def fold_tiles(values: np.ndarray, bank_rows: int | None = None) -> np.ndarray:
    """[tiles, n] -> [rows, banks * n]: row r holds tile b * rows + r at columns [b*n, (b+1)*n), zero
    past the last tile (the banked word layout of ccflow_tile_rom)."""
    rows, banks = tile_rom_shape(len(values), bank_rows)
    padded = np.zeros((rows * banks, values.shape[1]), dtype=values.dtype)
    padded[: len(values)] = values
    return padded.reshape(banks, rows, -1).transpose(1, 0, 2).reshape(rows, -1)


def bits_for(n: int) -> int:
    """Address width for ``n`` entries (at least 1 so a port never vanishes)."""
    return max(1, math.ceil(math.log2(max(n, 1))))


def signed_bits(values: np.ndarray) -> int:
    """The two's-complement width that holds every value (at least 2: a sign and one bit)."""
    lo, hi = int(np.min(values, initial=0)), int(np.max(values, initial=0))
    return max(2, hi.bit_length() + 1, (-lo - 1).bit_length() + 1)


def psum_bits(array) -> int:
    """Width of an exact in-tile row sum: weight + act + clog2(cols) + 1 (sign-extension headroom)."""
    return array.formats.weight_bits + array.formats.act_bits + bits_for(array.cols) + 1


def rtl_context(design: Design) -> dict:
    """Every number the templates use, derived from the design (nothing is written down twice).

    The templates see sizes and widths only: where each matrix, row block and LSTM unit lives is
    data in the descriptor ROMs (``matrices.mem``, ``blocks.mem``, ``tiles.mem``), so the Verilog
    of two models of the same shape on the same array differs only in its header's sizes.
    """
    arr, fmt = design.array, design.array.formats
    rows, cols, alpha = arr.rows, arr.cols, arr.alpha
    units = rows // 4
    if units > alpha:
        raise RenderError(f"array.rows={rows} needs alpha >= rows/4 = {units}: the pointwise unit writes rows/4 "
                          f"hidden values per cycle, one per act bank, and there are alpha={alpha} banks; "
                          f"raise array.alpha or lower array.rows")
    n_mats = len(design.matrices)
    n_layers = len(design.lstm_layers)
    block_bits = bits_for(design.n_blocks)
    shift_bits = max(1, int(max(fmt.max_shift, int(design.block_shift.max()))).bit_length())
    bias_bits = signed_bits(design.block_bias)
    psum = psum_bits(arr)
    tree_levels = bits_for(cols) if cols > 1 else 0
    local_bits = bits_for(design.act_size // alpha)
    act_bank_bits = (2 << local_bits) * fmt.act_bits  # one copy of a bank: both copies of its words
    cell_words = max(1, design.cell_size // units)
    pw_phases = pointwise_phases(design)
    pw_lanes = units // pw_phases
    dec = design.decoder
    array_stages = 1 + CELL_STAGES + max(1, tree_levels)  # input registers, cells, adder trees
    meta_stage = 3  # tiles.mem (ccflow_tile_rom): addressed in cycle 0, its word in cycle 3
    real_bits = units.bit_length()
    index_bits = max(bits_for(cell_words), bits_for(dec.n_blocks))
    bd_index = 2 + real_bits
    bd_mat = bd_index + index_bits
    bd_bank = bd_mat + bits_for(n_mats)
    bd_word = bd_bank + bits_for(alpha)
    emb_words = design.lstm_layers[0].out_base // alpha  # the embedding region, padded to whole bank rows
    rom_rows, rom_banks = tile_rom_shape(design.n_tiles)
    ctx = dict(
        prefix=arr.module_prefix,
        rows=rows, cols=cols, alpha=alpha, sel_bits=arr.sel_bits, units=units, cells=arr.cells,
        weight_bits=fmt.weight_bits, act_bits=fmt.act_bits, act_frac=fmt.act_frac, acc_bits=fmt.acc_bits,
        cell_bits=fmt.cell_bits, lut_frac=fmt.lut_frac, lut_shift=fmt.lut_shift, lut_bits=fmt.lut_bits,
        lut_size=fmt.lut_size, logit_frac=fmt.logit_frac, max_shift=fmt.max_shift,
        shift_bits=shift_bits, bias_bits=bias_bits, psum_bits=psum,
        sum_bits=max(fmt.acc_bits, psum) + 1,  # bias/accumulator + row sum, before saturation
        rq_bits=max(fmt.acc_bits, (1 << shift_bits) - 1) + 2,  # round_shift of an accumulator
        vocab=design.vocab_size, tok_bits=bits_for(design.vocab_size), emsize=design.emsize,
        act_size=design.act_size, bank_bits=bits_for(alpha), local_bits=local_bits,
        act_bank_bits=act_bank_bits, act_lut_ram=act_bank_bits <= ACT_LUT_RAM_BITS,
        emb_words=emb_words, emb_word_bits=bits_for(emb_words),
        emb_rom_words=design.vocab_size * emb_words, emb_addr_bits=bits_for(design.vocab_size * emb_words),
        cell_size=design.cell_size, cell_words=cell_words, cell_word_bits=bits_for(cell_words),
        pw_phases=pw_phases, pw_lanes=pw_lanes, pw_phase_bits=bits_for(pw_phases),
        cell_ram_words=cell_words * pw_phases,  # {row block, phase}: PHASES is a power of two
        cell_ram_bits=bits_for(cell_words) + (bits_for(pw_phases) if pw_phases > 1 else 0),
        n_tiles=design.n_tiles, tile_bits=bits_for(design.n_tiles),
        tile_rom_rows=rom_rows, tile_rom_banks=rom_banks, tile_row_bits=bits_for(rom_rows),
        n_blocks=design.n_blocks, block_bits=block_bits,
        n_mats=n_mats, mat_bits=bits_for(n_mats), n_layers=n_layers, layer_bits=bits_for(n_layers),
        tags=2 ** bits_for(n_layers + 2), tag_bits=bits_for(n_layers + 2),
        tree_levels=tree_levels, tree_stages=max(1, tree_levels),
        mul_stages=MUL_STAGES, cell_stages=CELL_STAGES,
        array_stages=array_stages,  # mx_array: cycles from its inputs to its row sums
        meta_stage=meta_stage,
        # S: cycle of a tile's accumulation, from its issue in cycle 0: tiles.mem word, addrs.mem
        # (three cycles, ccflow_tile_rom), the act banks (two: the RAM, its output register), the array
        acc_stage=meta_stage + 5 + array_stages,
        row_group=4,  # array rows served by one copy of the columns' inputs (mx_array)
        h_stage=10 + 2 * MUL_STAGES,  # ccflow_pointwise's stage that writes h (two multiplies in series, h registered)
        split_bits=cols.bit_length(),  # tiles.mem: the column where block A + 1 starts (1..cols)
        acc_event_bits=(3 * rows).bit_length(), pw_event_bits=(2 * pw_lanes).bit_length(),
        real_bits=real_bits, index_bits=index_bits, bd_index=bd_index, bd_mat=bd_mat, bd_bank=bd_bank,
        bd_word=bd_word, bdesc_bits=bd_word + local_bits,
        tok_bytes=-(-bits_for(design.vocab_size) // 8), logit_bytes=-(-design.vocab_size * fmt.act_bits // 8),
        matrices=[dict(name=m.name, tile_first=m.tile_start, tile_last=m.tile_start + m.n_tiles - 1,
                       block_first=m.block_start, block_last=m.block_start + m.n_blocks - 1, in_base=m.in_base,
                       kind=m.kind, hidden=m.hidden, out_base=m.out_base, cell_base=m.cell_base)
                  for m in design.matrices],
        packed_cells=design.packed_cells, ideal_cycles=design.ideal_cycles,
    )
    # One bias read per cycle unless some tile starts two blocks (A at column 0 and A + 1 at its
    # split: a block shorter than a tile); then the accumulator reads the bias ROM twice.
    ctx["bias_ports"] = 2 if start_interval(design) == 0 else 1
    ctx["bias_phases"] = bias_phases(design, ctx["acc_stage"] - meta_stage)
    ctx["bias_phase_bits"] = bits_for(ctx["bias_phases"])
    ctx["n_addr_rows"] = len(address_rows(design)[0])
    ctx["addr_row_bits"] = bits_for(ctx["n_addr_rows"])
    ctx["addr_rom_rows"], ctx["addr_rom_banks"] = tile_rom_shape(ctx["n_addr_rows"], ADDR_ROM_ROWS)
    ctx["addr_rom_row_bits"] = bits_for(ctx["addr_rom_rows"])
    ctx["tile_info_bits"] = block_bits + 2 + ctx["split_bits"]
    ctx["tile_meta_bits"] = ctx["tile_info_bits"] + ctx["addr_row_bits"]
    return ctx


def block_interval(design: Design) -> int:
    """The fewest cycles between two LSTM row blocks reaching the pointwise unit: a block finishes
    with its last tile, tiles issue at most one per cycle, and the first block of a matrix finishes
    at least its own tile count after any block before it."""
    gaps = []
    for m in design.lstm_layers:
        ends = [t for t in range(m.tile_start, m.tile_start + m.n_tiles) if design.tile_last[t]]
        gaps += [ends[0] - m.tile_start + 1] + [b - a for a, b in zip(ends, ends[1:])]
    return min(gaps, default=1)


def start_interval(design: Design) -> int:
    """The fewest cycles between two tiles that start a row block (0: a tile that starts two). A
    matrix's first tile starts a block, so after a matrix's last start the next comes no sooner
    than the matrix's remaining tiles plus one, whichever matrix is issued next."""
    cols = design.array.cols
    gaps = []
    for m in design.matrices:
        tiles = range(m.tile_start, m.tile_start + m.n_tiles)
        if any(design.tile_first[t] and design.tile_split[t] < cols for t in tiles):
            return 0
        starts = [t for t in tiles if design.tile_first[t] or design.tile_split[t] < cols]
        gaps += [b - a for a, b in zip(starts, starts[1:])] + [m.tile_start + m.n_tiles - starts[-1]]
    return min(gaps)


def bias_phases(design: Design, line: int) -> int:
    """How many bias.mem words hold a row block's bias, fetched one per cycle while the block's first
    tile travels the ``line`` = S - meta_stage cycles from its tiles.mem word to its accumulation in
    cycle S (ccflow_accumulator): words of fewer rows make the ROM deep instead of wide (a 32-row
    block's bias word is 18-29 block RAMs wide, however few blocks). The largest power of two that
    divides the rows and leaves the fetch done by S (phases + 3 <= line), if blocks start at least
    ``line`` cycles apart; else 1 (the whole word read at once)."""
    rows = design.array.rows
    if start_interval(design) < line:
        return 1
    phases = 1
    while rows % (2 * phases) == 0 and 2 * phases + 3 <= line:
        phases *= 2
    return phases


def pointwise_phases(design: Design) -> int:
    """How many cycles the pointwise unit spends on a row block: its rows/4 units go through
    rows/4 / phases lanes, so the lanes' multipliers and activation tables shrink by that factor.
    The largest power of two that divides rows/4 and is no more than the cycles between two
    blocks (:func:`block_interval`): the array never waits for the pointwise unit."""
    units, gap, phases = design.array.rows // 4, block_interval(design), 1
    while units % (2 * phases) == 0 and 2 * phases <= gap:
        phases *= 2
    return phases


def address_rows(design: Design) -> tuple[np.ndarray, np.ndarray]:
    """The act words the tiles read, one row per distinct set ([rows, cols * alpha]: word of bank k
    of column c at c * alpha + k), and each tile's row. Tiles of different row blocks that read the
    same column groups share a row: with whole-matrix groups that is every row block of a matrix,
    so addrs.mem keeps tens of rows where it would keep thousands (one per tile)."""
    words = (design.tile_addr // design.array.alpha).reshape(design.n_tiles, -1)
    rows, index = np.unique(words, axis=0, return_inverse=True)
    return rows, index.reshape(-1)


def token_interval(design: Design) -> float:
    """Cycles between two tokens of the generated top without stalls, once its layer wavefront is
    full (docs/hardware.md, Cycles per token): the controller's schedule replayed cycle by cycle
    (:mod:`ccflow.schedule`). The test benches measure the same figure on the hardware."""
    from .schedule import Timing, accept_cycles, steady_interval

    ctx = rtl_context(design)
    n_mats = len(design.matrices)
    timing = Timing(acc_stage=ctx["acc_stage"], h_stage=ctx["h_stage"], emb_words=ctx["emb_words"],
                    pw_phases=ctx["pw_phases"])
    return steady_interval(accept_cycles(design, timing, 2 * n_mats + 6), n_mats)


def block_descriptors(design: Design) -> np.ndarray:
    """blocks.mem fields per row block: [lstm, last, real units, index, matrix, h bank, h word]."""
    units, alpha = design.array.rows // 4, design.array.alpha
    out = np.zeros((design.n_blocks, 7), dtype=np.int64)
    for k, m in enumerate(design.matrices):
        for b in range(m.n_blocks):
            row = out[m.block_start + b]
            row[1] = b == m.n_blocks - 1
            row[4] = k
            if m.kind == "lstm":
                first = b * units  # the block's first unit
                row[0] = 1
                row[2] = max(0, min(units, m.hidden - first))
                row[3] = m.cell_base // units + b
                row[5] = (m.out_base + first) % alpha
                row[6] = (m.out_base + first) // alpha
            else:
                row[3] = b
    return out


def matrix_descriptors(design: Design) -> np.ndarray:
    """matrices.mem fields per matrix: [last tile, first act word of its own h (or 2^LOCAL_BITS: none),
    the matrix has one tile, the matrix after it (matrix 0 after the decoder) has one tile, its tiles
    minus one, the next matrix's tiles minus one].

    The flags and counts let the controller keep "this is the matrix's last tile" and "the next tile
    is the last" in registers (a down-counter) as it moves from matrix to matrix, instead of adding
    and comparing tile numbers on its issue path.
    """
    none = 1 << rtl_context(design)["local_bits"]
    left = [m.n_tiles - 1 for m in design.matrices]
    nxt = [(i + 1) % len(left) for i in range(len(left))]
    return np.array([[m.tile_start + m.n_tiles - 1, m.out_base // design.array.alpha if m.kind == "lstm" else none,
                      int(left[i] == 0), int(left[nxt[i]] == 0), left[i], left[nxt[i]]]
                     for i, m in enumerate(design.matrices)], dtype=np.int64)


def embedding_words(design: Design) -> np.ndarray:
    """embedding.mem: word token * EMB_WORDS + j holds act words j*alpha .. j*alpha + alpha - 1.

    Tokens follow each other without padding to a power of two: 22 words a token would take 32, and
    on 3 x 320 (20 words a token) the 1,000 words fit one 1,024-deep block RAM column (15 DP16KD)
    where 50 << 5 = 1,600 took a 2,048-deep one (29)."""
    alpha, words = design.array.alpha, rtl_context(design)["emb_words"]
    padded = np.zeros((design.vocab_size, words * alpha), dtype=np.int64)
    padded[:, : design.emsize] = design.embedding
    return padded.reshape(-1, alpha)


def _environment(template_dir: Path):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(max=max, min=min, range=range)
    return env


def _render(env, name: str, ctx: dict) -> str:
    import jinja2

    try:
        return env.get_template(name).render(**ctx)
    except jinja2.UndefinedError as e:
        m = re.search(r"'([^']+)' is undefined", str(e))
        what = m.group(1) if m else str(e).splitlines()[0]
        raise RenderError(f"rtl_templates/{name}: undefined template variable '{what}'") from None
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(f"rtl_templates/{name}:{e.lineno}: template syntax error: {e.message}") from None


def render_rtl(design: Design, out_dir: str | Path, template_dir: str | Path | None = None) -> list[Path]:
    """Write design.npz, array_config.json, the Verilog and the .mem files; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template_dir = Path(template_dir) if template_dir is not None else TEMPLATE_DIR
    templates = sorted(p.name for p in template_dir.glob("*.j2"))
    if not templates:
        raise RenderError(f"no templates (*.j2) in {template_dir}")
    design.save(out_dir)
    written = [out_dir / "array_config.json", out_dir / "design.npz"]
    env = _environment(template_dir)
    ctx = rtl_context(design)
    for name in templates:
        path = out_dir / design.array.module(name[: -len(".j2")])
        path.write_text(_render(env, name, ctx))
        written.append(path)
    for name, text in mem_files(design).items():
        (out_dir / name).write_text(text)
        written.append(out_dir / name)
    written += write_ip_files(design, out_dir)
    return written


def write_ip_files(design: Design, out_dir: Path) -> list[Path]:
    """``files.f`` (a simulator/synthesis file list) and ``ccflow.core`` (FuseSoC CAPI2) for the rtl folder.

    Both name paths relative to the rtl folder, so the folder can be copied anywhere as one IP:
    Vivado ``add_files -f``-style flows, Verilator/Icarus ``-f files.f``, or ``fusesoc library add``.
    The ``$readmemh`` files are read from MEM_DIR (default: the tool's working directory), so they
    are listed as data files that FuseSoC copies next to the build.
    """
    sources = [p.name for p in verilog_sources(out_dir)]
    mems = sorted(MEM_FILES)
    files_f = out_dir / "files.f"
    arr = design.array
    top = arr.module("ccflow_top")
    files_f.write_text(f"// ccflow generated RTL: top {top} (Verilog-2001); read the .mem files from MEM_DIR\n"
                       + "".join(f"{name}\n" for name in sources))
    core = out_dir / "ccflow.core"
    lines = [
        "CAPI=2:",
        f"name: ccflow:generated:{top}:0.1.0",
        f"description: column-combined LSTM LM accelerator, {arr.rows} x {arr.cols} MX cells, alpha {arr.alpha}",
        "filesets:",
        "  rtl:",
        "    file_type: verilogSource",
        "    files:",
        *[f"      - {name}" for name in sources],
        "  mem:",
        "    file_type: user",
        "    files:",
        *[f"      - {name}: {{copyto: {name}}}" for name in mems],
        "targets:",
        "  default:",
        "    filesets: [rtl, mem]",
        f"    toplevel: {top}",
        "  lint:",
        "    default_tool: verilator",
        "    filesets: [rtl, mem]",
        f"    toplevel: {top}",
        "    tools:",
        "      verilator:",
        "        mode: lint-only",
        "        verilator_options: [-Wall]",
        "",
    ]
    core.write_text("\n".join(lines))
    return [files_f, core]


def verilog_sources(rtl_dir: str | Path) -> list[Path]:
    """The generated Verilog modules of an rtl folder."""
    return sorted(Path(rtl_dir).glob("*.v"))


def rtl_module(rtl_dir: str | Path, name: str = "ccflow_top") -> str:
    """The name the generated module ``name`` has in ``rtl_dir``: its array's ``module_prefix`` + name.

    A folder without a readable ``array_config.json`` gets the plain name; the stage that loads the
    design then says what is wrong with it.
    """
    try:
        return ArrayConfig.load(Path(rtl_dir) / "array_config.json").module(name)
    except (OSError, ValueError):
        return name


# --- $readmemh files ---------------------------------------------------------


def mem_layout(design: Design) -> dict[str, tuple[list[tuple[np.ndarray, int, bool]], int]]:
    """For each .mem file: its fields (values [words, n], bits, signed), LSB first, and the word count."""
    ctx = rtl_context(design)
    fmt = design.array.formats
    t = design.n_tiles
    addr_rows, addr_row = address_rows(design)
    bd = block_descriptors(design)
    md = matrix_descriptors(design)
    bd_widths = [1, 1, ctx["real_bits"], ctx["index_bits"], ctx["mat_bits"], ctx["bank_bits"], ctx["local_bits"]]
    return {
        "weights.mem": ([(fold_tiles(design.tile_weight.reshape(t, -1)), fmt.weight_bits, True)], ctx["tile_rom_rows"]),
        "selects.mem": ([(fold_tiles(design.tile_sel.reshape(t, -1)), ctx["sel_bits"], False)], ctx["tile_rom_rows"]),
        "addrs.mem": ([(fold_tiles(addr_rows, ADDR_ROM_ROWS), ctx["local_bits"], False)], ctx["addr_rom_rows"]),
        "tiles.mem": (tile_meta_fields(design, ctx, addr_row), ctx["tile_rom_rows"]),
        "bias.mem": ([(design.block_bias.reshape(design.n_blocks * ctx["bias_phases"], -1), ctx["bias_bits"], True)],
                     design.n_blocks * ctx["bias_phases"]),
        "shift.mem": ([(design.block_shift, ctx["shift_bits"], False)], design.n_blocks),
        "blocks.mem": ([(bd[:, i:i + 1], w, False) for i, w in enumerate(bd_widths)], design.n_blocks),
        "matrices.mem": ([(md[:, :1], ctx["tile_bits"], False), (md[:, 1:2], ctx["local_bits"] + 1, False),
                          (md[:, 2:3], 1, False), (md[:, 3:4], 1, False),
                          (md[:, 4:5], ctx["tile_bits"], False), (md[:, 5:6], ctx["tile_bits"], False)],
                         len(design.matrices)),
        "embedding.mem": ([(embedding_words(design), fmt.act_bits, True)], ctx["emb_rom_words"]),
        "sigmoid.mem": ([(design.lut_sigmoid[:, None], fmt.act_bits, True)], fmt.lut_size),
        "tanh.mem": ([(design.lut_tanh[:, None], fmt.act_bits, True)], fmt.lut_size),
    }


def tile_meta_fields(design: Design, ctx: dict, addr_row: np.ndarray) -> list[tuple[np.ndarray, int, bool]]:
    """tiles.mem: each tile's {addr row, split, last, first, block} (LSB first), folded like the
    weights (:func:`fold_tiles`): bank b's fields at bits [b * tile_meta_bits +: tile_meta_bits]."""
    per_tile = [(design.tile_block, ctx["block_bits"]), (design.tile_first.astype(np.int64), 1),
                (design.tile_last.astype(np.int64), 1), (design.tile_split, ctx["split_bits"]),
                (addr_row, ctx["addr_row_bits"])]
    folded = [(fold_tiles(np.asarray(v)[:, None]), bits) for v, bits in per_tile]
    return [(values[:, b:b + 1], bits, False) for b in range(ctx["tile_rom_banks"]) for values, bits in folded]


def mem_files(design: Design) -> dict[str, str]:
    return {name: pack_words(name, fields) for name, (fields, _) in mem_layout(design).items()}


def pack_words(name: str, fields: list[tuple[np.ndarray, int, bool]]) -> str:
    """One hex word per line from fields concatenated LSB first; refuses values that do not fit."""
    columns = []
    for values, bits, signed in fields:
        v = np.asarray(values, dtype=np.int64)
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if v.size and (v.min() < lo or v.max() > hi):
            raise RenderError(f"{name}: value out of the {bits}-bit {'signed' if signed else 'unsigned'} "
                              f"field range {lo}..{hi} (min {v.min()}, max {v.max()})")
        columns.append((v & ((1 << bits) - 1))[..., None] >> np.arange(bits) & 1)  # [words, n, bits]
    words = columns[0].shape[0]
    bitmat = np.concatenate([c.reshape(words, -1) for c in columns], axis=1).astype(np.uint8)
    pad = (-bitmat.shape[1]) % 4
    if pad:
        bitmat = np.concatenate([bitmat, np.zeros((words, pad), dtype=np.uint8)], axis=1)
    nibbles = bitmat.reshape(words, -1, 4) @ np.array([1, 2, 4, 8], dtype=np.uint8)
    digits = np.array(list("0123456789abcdef"))[nibbles[:, ::-1]]
    return "".join("".join(row) + "\n" for row in digits)


def read_mem(path: str | Path, fields: list[tuple[int, int, bool]]) -> list[np.ndarray]:
    """Parse a .mem file back into fields ``(count, bits, signed)``, LSB first: [words, count] each."""
    words = [int(line, 16) for line in Path(path).read_text().split()]
    out = []
    shift = 0
    for count, bits, signed in fields:
        a = np.zeros((len(words), count), dtype=np.int64)
        mask = (1 << bits) - 1
        for w, word in enumerate(words):
            for i in range(count):
                v = (word >> (shift + i * bits)) & mask
                a[w, i] = v - (1 << bits) if signed and v >> (bits - 1) else v
        shift += count * bits
        out.append(a)
    return out
