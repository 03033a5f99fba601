"""Render the Verilog of one :class:`~ccflow.cnn_quantize.CnnDesign` and write its ROM files.

The CNN accelerator (rtl_templates/cnn/, docs/hardware.md "CNN") runs on the same MX array as
the LSTM: ``mx_array``, ``mx_cell``, ``ccflow_mul``, the tile ROMs and RAM modules are rendered
from the shared templates of ``rtl_templates/`` with this module's context, and the CNN's own
modules (controller, feature maps, accumulators) from ``rtl_templates/cnn/``. The paper's
dataflow: a packed tile stays in the array while the input vectors of all output positions of
its layer stream through it, one position per cycle, so weights are read once per image.

As for the LSTM, the Verilog depends on sizes only; where layers, tiles and row blocks live is
data in ROMs written here:

==============  ===========================================================================
``layers.mem``  per weight layer (:func:`layer_descriptors`): its tiles, first block, positions
                and the cycles a tile spends on them, output and input map sizes, ReLU, pool, last
``blocks.mem``  per row block (:func:`block_descriptors`): the tile it ends in, its real rows, the
                map word of its first output channel
``taps.mem``    per distinct column set of the tiles (:func:`tap_rows`): for every array input
                (column c, slot k) the pixel it reads relative to an output position: on, dy,
                dx and the map offset (``CnnLayer.tap``)
``tiles.mem``   per tile: taps row, split, first, block (folded like the weights)
``weights.mem``, ``selects.mem``, ``bias.mem``, ``shift.mem``: as the LSTM's
==============  ===========================================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cnn_quantize import CnnDesign
from .generate import (CELL_STAGES, MUL_STAGES, TEMPLATE_DIR, _environment, _render, bits_for,
                       fold_tiles, pack_words, psum_bits, signed_bits, tile_rom_shape, verilog_sources)

# The shared modules the CNN top instantiates, rendered from rtl_templates/ with the CNN context.
SHARED_TEMPLATES = ("mx_array.v.j2", "mx_cell.v.j2", "ccflow_mul.v.j2", "ccflow_pipe_reg.v.j2", "ccflow_ram.v.j2",
                    "ccflow_rom.v.j2", "ccflow_tile_rom.v.j2")
CNN_TEMPLATE_DIR = TEMPLATE_DIR / "cnn"
MEM_FILES = ("weights.mem", "selects.mem", "tiles.mem", "taps.mem", "bias.mem", "shift.mem", "blocks.mem",
             "layers.mem")

# The accumulator reads a position's partial sum, adds the tile's row sum and writes it back three
# cycles later (ccflow_cnn_acc: read, block-RAM output register, add and saturate, write), so the
# same position comes back no sooner than four cycles: a layer with fewer positions (a Linear
# layer has one) spends MIN_PASS cycles per tile, the rest bubbles.
MIN_PASS = 4
# Pipeline of ccflow_cnn_fmap, from a position's issue (cycle 0) to the array's inputs:
# tiles.mem (3 cycles), taps.mem with its output register (2), the slot address and its validity
# (1), the map block RAM with its output register (2).
IN_STAGE = 8


# ccflow_cnn_acc's drain works in slots: in slot j it reads output j's pooling window (all rows at
# once, a window position per cycle) and writes output j - 1's rows (one per cycle); a slot lasts
# max(DRAIN_MIN_SLOT, rows) cycles (the held maxima are taken in its cycle 4). The first slot only
# reads, one more after the last output only writes.
DRAIN_MIN_SLOT = 5
# Cycles of ccflow_cnn_ctrl/ccflow_cnn_acc around a row block's streaming, besides the flush: the
# blocks.mem read (2), the drain's start (1) and its pipeline tail from the last row's issue until
# done (9); per layer the layers.mem read (2); per image the logits beat (1).
BLOCK_OVERHEAD = 2 + 1 + 9
LAYER_OVERHEAD = 2
IMAGE_OVERHEAD = 1


def image_cycles(design: CnnDesign) -> dict:
    """Cycles between two images' logits without stalls, and where they go: ``load`` (a pixel per
    cycle), ``stream`` (tiles x max(positions, MIN_PASS)), ``drain`` (per row block and output a
    slot of max(DRAIN_MIN_SLOT, rows) cycles), ``overhead`` (descriptor reads, flushes, drain
    pipeline). The simulation benches measure the total (tests/test_cnn_hw.py asserts they agree)."""
    ctx = rtl_context(design)
    rows = design.array.rows
    out = {"load": ctx["in_words"], "stream": 0, "drain": 0, "overhead": IMAGE_OVERHEAD}
    for layer in design.layers:
        m = design.matrices[layer.matrix]
        out["stream"] += m.n_tiles * max(layer.positions, MIN_PASS)
        outputs = layer.hp * layer.wp
        for b in range(m.n_blocks):  # the first slot, the full ones, the last one up to its last row's issue
            real = min(rows, m.rows - b * rows)
            out["drain"] += DRAIN_MIN_SLOT + (outputs - 1) * max(DRAIN_MIN_SLOT, real) + real
        out["overhead"] += LAYER_OVERHEAD + m.n_blocks * (BLOCK_OVERHEAD + ctx["flush_cycles"] + 1)
    out["total"] = sum(out.values())
    return out


def layer_descriptors(design: CnnDesign) -> np.ndarray:
    """layers.mem fields per layer: [first tile, last tile, first block, positions - 1, pass - 1,
    wo, row skip (win - wo + 1), hin, win, relu, pool, last, hp, wp, plane (hp * wp: the map words
    of one output channel)]."""
    out = []
    for layer in design.layers:
        m = design.matrices[layer.matrix]
        p = layer.positions
        out.append([m.tile_start, m.tile_start + m.n_tiles - 1, m.block_start, p - 1, max(p, MIN_PASS) - 1,
                    layer.wo, layer.win - layer.wo + 1, layer.hin, layer.win, int(layer.relu),
                    int(layer.pool == 2), int(layer.last), layer.hp, layer.wp, layer.hp * layer.wp])
    return np.array(out, dtype=np.int64)


def block_descriptors(design: CnnDesign) -> np.ndarray:
    """blocks.mem fields per row block: [the tile it ends in, real rows - 1, map word (or logit
    index) of its first output channel]."""
    rows = design.array.rows
    ends = {int(design.tile_block[t]): t for t in range(design.n_tiles) if design.tile_last[t]}
    out = []
    for layer in design.layers:
        m = design.matrices[layer.matrix]
        for b in range(m.n_blocks):
            out.append([ends[m.block_start + b], min(rows, m.rows - b * rows) - 1, b * rows * layer.hp * layer.wp])
    return np.array(out, dtype=np.int64)


def tap_rows(design: CnnDesign) -> tuple[np.ndarray, np.ndarray]:
    """The distinct tap sets of the tiles ([rows, cols * alpha, 4]: on, dy, dx, offset of input
    slot k of column c at c * alpha + k) and each tile's row. A slot is on when some cell of its
    column selects it and it names a matrix column; off slots read zero, as the golden model's
    zero-padded input vector does."""
    arr = design.array
    taps = np.zeros((design.n_tiles, arr.cols * arr.alpha, 4), dtype=np.int64)
    for layer in design.layers:
        m = design.matrices[layer.matrix]
        for t in range(m.tile_start, m.tile_start + m.n_tiles):
            j = design.tile_addr[t]  # [cols, alpha]
            picked = np.zeros((arr.cols, arr.alpha), dtype=bool)
            picked[np.arange(arr.cols)[None, :].repeat(arr.rows, 0), design.tile_sel[t]] = True
            on = picked & (j < m.in_size)
            dy, dx, off = layer.tap(np.where(on, j, 0))
            taps[t] = np.stack([on, dy * on, dx * on, off * on], axis=-1).reshape(-1, 4)
    rows, index = np.unique(taps.reshape(design.n_tiles, -1), axis=0, return_inverse=True)
    return rows.reshape(len(rows), -1, 4), index.reshape(-1)


def rtl_context(design: CnnDesign) -> dict:
    """Every number the CNN templates (and the shared ones) use, derived from the design."""
    arr, fmt = design.array, design.array.formats
    rows, cols, alpha = arr.rows, arr.cols, arr.alpha
    layers = design.layers
    taps, _ = tap_rows(design)
    c, h, w = design.in_shape
    map_words = max([c * h * w, design.classes] + [lay.in_words for lay in layers] +
                    [lay.out_words(design.matrices[lay.matrix].rows) for lay in layers if not lay.last])
    positions = max(lay.positions for lay in layers)
    dim = max([h, w] + [max(lay.hin, lay.win, lay.ho, lay.wo) for lay in layers])
    tree_levels = bits_for(cols) if cols > 1 else 0
    array_stages = 1 + CELL_STAGES + max(1, tree_levels)
    rom_rows, rom_banks = tile_rom_shape(design.n_tiles)
    shift_bits = max(1, int(max(fmt.max_shift, int(design.block_shift.max()))).bit_length())
    ctx = dict(
        prefix=arr.module_prefix,
        rows=rows, cols=cols, alpha=alpha, sel_bits=arr.sel_bits, cells=arr.cells,
        weight_bits=fmt.weight_bits, act_bits=fmt.act_bits, act_frac=fmt.act_frac, acc_bits=fmt.acc_bits,
        logit_frac=fmt.logit_frac, shift_bits=shift_bits, bias_bits=signed_bits(design.block_bias),
        psum_bits=psum_bits(arr), sum_bits=max(fmt.acc_bits, psum_bits(arr)) + 1,
        split_bits=cols.bit_length(), tree_levels=tree_levels, tree_stages=max(1, tree_levels),
        mul_stages=MUL_STAGES, cell_stages=CELL_STAGES, array_stages=array_stages, row_group=4,
        n_tiles=design.n_tiles, tile_bits=bits_for(design.n_tiles), tile_rom_rows=rom_rows,
        tile_rom_banks=rom_banks, tile_row_bits=bits_for(rom_rows),
        n_blocks=design.n_blocks, block_bits=bits_for(design.n_blocks), n_layers=len(layers),
        layer_bits=bits_for(len(layers)), row_bits=bits_for(rows),
        n_tap_rows=len(taps), tap_row_bits=bits_for(len(taps)),
        tap_dy_bits=signed_bits(taps[..., 1]), tap_dx_bits=signed_bits(taps[..., 2]),
        tap_off_bits=signed_bits(taps[..., 3]),
        map_words=map_words, map_bits=bits_for(map_words), dim_bits=bits_for(dim + 1),
        pos_bits=bits_for(positions), acc_words=positions,
        in_words=c * h * w, in_shape=design.in_shape, classes=design.classes, class_bits=bits_for(design.classes),
        pixel_bytes=-(-fmt.act_bits // 8), logit_bytes=-(-design.classes * fmt.act_bits // 8),
        min_pass=MIN_PASS, in_stage=IN_STAGE, acc_stage=IN_STAGE + array_stages,
        packed_cells=design.packed_cells, dense_cells=design.dense_cells,
        layers=[dict(name=design.matrices[lay.matrix].name, kind=lay.kind, positions=lay.positions,
                     tiles=design.matrices[lay.matrix].n_tiles) for lay in layers],
    )
    # the flush: from a tile's last issue to its last accumulator write (acc_stage + 3), plus one
    ctx["flush_cycles"] = ctx["acc_stage"] + 4
    ctx["flush_bits"] = bits_for(ctx["flush_cycles"] + 1)
    # per-tile metadata word (tiles.mem): block, first, split, taps row
    ctx["tile_meta_bits"] = ctx["block_bits"] + 1 + ctx["split_bits"] + ctx["tap_row_bits"]
    ctx["tap_bits"] = 1 + ctx["tap_dy_bits"] + ctx["tap_dx_bits"] + ctx["tap_off_bits"]
    ctx["addr_calc_bits"] = max(ctx["map_bits"], ctx["tap_off_bits"]) + 2  # pbase + offset, signed
    ctx["coord_bits"] = max(ctx["dim_bits"], ctx["tap_dy_bits"], ctx["tap_dx_bits"]) + 2  # oy + dy, signed
    ctx["layer_fields"] = _layer_fields(ctx)
    # ccflow_cnn_acc's drain slots last max(DRAIN_MIN_SLOT, rows) cycles
    ctx["drain_slot_bits"] = bits_for(max(rows, DRAIN_MIN_SLOT))
    ctx["layer_word_bits"] = sum(b for _, b in ctx["layer_fields"])
    ctx["block_fields"] = [("end", ctx["tile_bits"]), ("real", ctx["row_bits"]), ("base", ctx["map_bits"])]
    ctx["block_word_bits"] = sum(b for _, b in ctx["block_fields"])
    ctx["pass_bits"] = ctx["layer_fields"][4][1]
    return ctx


def _layer_fields(ctx: dict) -> list[tuple[str, int]]:
    """layers.mem's fields, LSB first: ccflow_cnn_ctrl slices them in this order and these widths
    (its O_* offsets), so a change here is a change there: test_cnn_hw checks the two agree field by
    field, the CNN benches bit for bit."""
    t, d, p = ctx["tile_bits"], ctx["dim_bits"], ctx["pos_bits"]
    return [("tile_first", t), ("tile_last", t), ("block_first", ctx["block_bits"]), ("pos_last", p),
            ("pass_last", max(p, bits_for(MIN_PASS))), ("wo", d), ("row_skip", d), ("hin", d), ("win", d),
            ("relu", 1), ("pool", 1), ("last", 1), ("hp", d), ("wp", d), ("plane", ctx["map_bits"])]


def mem_layout(design: CnnDesign) -> dict[str, tuple[list[tuple[np.ndarray, int, bool]], int]]:
    """For each .mem file: its fields (values [words, n], bits, signed), LSB first, and the word count."""
    ctx = rtl_context(design)
    fmt = design.array.formats
    t = design.n_tiles
    taps, tap_row = tap_rows(design)
    ld, bd = layer_descriptors(design), block_descriptors(design)
    per_tile = [(design.tile_block, ctx["block_bits"]), (design.tile_first.astype(np.int64), 1),
                (design.tile_split, ctx["split_bits"]), (tap_row, ctx["tap_row_bits"])]
    folded = [(fold_tiles(np.asarray(v)[:, None]), bits) for v, bits in per_tile]
    tile_meta = [(values[:, b:b + 1], bits, False) for b in range(ctx["tile_rom_banks"]) for values, bits in folded]
    slots = taps.shape[1]
    tap_fields = []
    for s in range(slots):  # slot s = column c * alpha + k: [on, dy, dx, offset] at [s*TAP_BITS +: TAP_BITS]
        tap_fields += [(taps[:, s, 0:1], 1, False), (taps[:, s, 1:2], ctx["tap_dy_bits"], True),
                       (taps[:, s, 2:3], ctx["tap_dx_bits"], True), (taps[:, s, 3:4], ctx["tap_off_bits"], True)]
    return {
        "weights.mem": ([(fold_tiles(design.tile_weight.reshape(t, -1)), fmt.weight_bits, True)], ctx["tile_rom_rows"]),
        "selects.mem": ([(fold_tiles(design.tile_sel.reshape(t, -1)), ctx["sel_bits"], False)], ctx["tile_rom_rows"]),
        "tiles.mem": (tile_meta, ctx["tile_rom_rows"]),
        "taps.mem": (tap_fields, len(taps)),
        "bias.mem": ([(design.block_bias, ctx["bias_bits"], True)], design.n_blocks),
        "shift.mem": ([(design.block_shift, ctx["shift_bits"], False)], design.n_blocks),
        "blocks.mem": ([(bd[:, i:i + 1], bits, False) for i, (_, bits) in enumerate(ctx["block_fields"])],
                       design.n_blocks),
        "layers.mem": ([(ld[:, i:i + 1], bits, False) for i, (_, bits) in enumerate(ctx["layer_fields"])],
                       len(ld)),
    }


def render_cnn_rtl(design: CnnDesign, out_dir: str | Path) -> list[Path]:
    """Write design.npz, array_config.json, the Verilog, the .mem files, files.f and ccflow.core."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    design.save(out_dir)
    written = [out_dir / "array_config.json", out_dir / "design.npz"]
    ctx = rtl_context(design)
    for template_dir, names in ((TEMPLATE_DIR, SHARED_TEMPLATES),
                                (CNN_TEMPLATE_DIR, sorted(p.name for p in CNN_TEMPLATE_DIR.glob("*.j2")))):
        env = _environment(template_dir)
        for name in names:
            path = out_dir / design.array.module(name[: -len(".j2")])
            path.write_text(_render(env, name, ctx))
            written.append(path)
    for name, (fields, _) in mem_layout(design).items():
        (out_dir / name).write_text(pack_words(name, fields))
        written.append(out_dir / name)
    written += _write_ip_files(design, out_dir)
    return written


def _write_ip_files(design: CnnDesign, out_dir: Path) -> list[Path]:
    """files.f and a FuseSoC core, as for the LSTM (ccflow.generate.write_ip_files)."""
    sources = [p.name for p in verilog_sources(out_dir)]
    files_f = out_dir / "files.f"
    arr = design.array
    top = arr.module("ccflow_top")
    files_f.write_text(f"// ccflow generated RTL: CNN top {top} (Verilog-2001); read the .mem files from MEM_DIR\n"
                       + "".join(f"{name}\n" for name in sources))
    core = out_dir / "ccflow.core"
    lines = ["CAPI=2:", f"name: ccflow:generated:{top}:0.1.0",
             f"description: column-combined CNN accelerator, {arr.rows} x {arr.cols} MX cells, alpha {arr.alpha}",
             "filesets:", "  rtl:", "    file_type: verilogSource", "    files:",
             *[f"      - {n}" for n in sources],
             "  mem:", "    file_type: user", "    files:", *[f"      - {n}: {{copyto: {n}}}" for n in sorted(MEM_FILES)],
             "targets:", "  default:", "    filesets: [rtl, mem]", f"    toplevel: {top}",
             "  lint:", "    default_tool: verilator", "    filesets: [rtl, mem]", f"    toplevel: {top}",
             "    tools:", "      verilator:", "        mode: lint-only", "        verilator_options: [-Wall]", ""]
    core.write_text("\n".join(lines))
    return [files_f, core]
