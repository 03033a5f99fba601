"""The CNN's hardware: the generated Verilog (ccflow.cnn_generate) and HLS C++ (ccflow.cnn_hls) against
the integer golden model (CnnGolden), bit for bit, and the flow that builds them from a checkpoint.

Designs are random masked networks packed with column combining on an 8 x 4 array of 4-input
cells, so row blocks end mid-tile (two blocks per tile), convolutions are zero-padded, pooling,
ReLU and Linear layers all run, and one design saturates its accumulators. The simulations are
marked ``sim`` (``-m "not sim"`` deselects them).
"""

import re

import numpy as np
import pytest

from ccflow.arrayconfig import ArrayConfig, NumberFormats
from ccflow.cnn_generate import image_cycles
from ccflow.cnn_quantize import CnnDesign, CnnGolden, IntStage, QuantizeError, cnn_layers, quantize_cnn

SIMS = ["icarus", "verilator"]


def _design(arch="lenet5", shape=(1, 8, 8), gamma=0.5, seed=0, prune=0.5, prefix="", **formats):
    from test_cnn import _float_cnn

    fm, packings = _float_cnn(arch, shape, prune, seed).combined(4, gamma, 8)
    array = ArrayConfig(rows=8, cols=4, alpha=4, formats=NumberFormats(act_frac=8, **formats), module_prefix=prefix)
    return quantize_cnn(fm, array, packings)


def _images(n, shape=(1, 8, 8), seed=1, scale=1.0):
    return np.random.default_rng(seed).random((n, *shape)) * scale


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    from ccflow.cnn_generate import render_cnn_rtl

    design = _design()
    out = tmp_path_factory.mktemp("cnn-lenet")
    render_cnn_rtl(design, out)
    return design, out


@pytest.fixture(scope="module")
def saturating(tmp_path_factory):
    """LeNet-5 on a 24-bit accumulator that saturates on bright images (SATURATING_SCALE)."""
    from ccflow.cnn_generate import render_cnn_rtl

    design = _design(gamma=0.25, seed=2, prune=0.3, acc_bits=24)
    out = tmp_path_factory.mktemp("cnn-saturating")
    render_cnn_rtl(design, out)
    return design, out


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """vgg-small: 3 channels in, 3 x 3 convolutions two per pooling (a drain without pooling); every
    module named cnn0_... (array.module_prefix), so the benches must find the design's own top."""
    from ccflow.cnn_generate import render_cnn_rtl

    design = _design("vgg-small", (3, 8, 8), gamma=0.5, seed=3, prune=0.9, prefix="cnn0_")
    out = tmp_path_factory.mktemp("cnn-vgg")
    render_cnn_rtl(design, out)
    return design, out


SCALE = {"lenet": 1.0, "saturating": 120.0, "vgg": 1.0}


def test_design_saves_and_loads_and_the_lstm_loader_refuses_it(lenet, tmp_path):
    from ccflow.design import Design, design_kind

    design, out = lenet
    back = CnnDesign.load(out)
    assert back.layers == design.layers and back.matrices == design.matrices and design_kind(out) == "cnn"
    for name in CnnDesign._ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(design, name))
    x = _images(4)
    np.testing.assert_array_equal(CnnGolden(back).run(x), CnnGolden(design).run(x))
    with pytest.raises(ValueError, match="holds a CNN design"):
        Design.load(out)


def test_the_packing_splits_blocks_inside_tiles_and_pads_convolutions(lenet):
    design, _ = lenet
    assert (design.tile_split < design.array.cols).any(), "no tile holds two row blocks: the test would miss B"
    assert design.n_blocks > len(design.matrices)
    layers = design.layers
    assert [lay.kind for lay in layers] == ["conv", "conv", "fc", "fc", "fc"]
    assert layers[0].padding == 2 and layers[0].pool == 2 and layers[0].relu and layers[-1].last
    assert not layers[-1].relu


def test_layers_the_hardware_cannot_run_are_refused(lenet):
    design, _ = lenet
    stages = list(design.stages)
    bad = [IntStage("pool", size=3) if s.kind == "pool" else s for s in stages]
    with pytest.raises(QuantizeError, match="pools 2 x 2"):
        cnn_layers(design.in_shape, bad, design.matrices)
    swapped = stages[:1] + [stages[2], stages[1]] + stages[3:]  # pool before the ReLU
    with pytest.raises(QuantizeError, match="ReLU right after a weight layer"):
        cnn_layers(design.in_shape, swapped, design.matrices)


def test_tap_table_reads_each_receptive_field(lenet):
    """Every input slot the cells use reads, via taps.mem, exactly the pixel im2col puts in that
    matrix column (the table the Verilog and the C++ both read)."""
    from ccflow.cnn import im2col
    from ccflow.cnn_generate import tap_rows

    design, _ = lenet
    taps, row = tap_rows(design)
    x = np.arange(1, 1 + 6 * 4 * 4).reshape(1, 6, 4, 4)  # conv1's input map, every pixel distinct
    layer = design.layers[1]
    m = design.matrices[layer.matrix]
    cols = im2col(x, layer.kernel, layer.padding)[0]  # [positions, in * k * k]
    flat = x.reshape(-1)
    checked = 0
    for t in range(m.tile_start, m.tile_start + m.n_tiles):
        for slot, (on, dy, dx, off) in enumerate(taps[row[t]]):
            if not on:
                continue
            j = design.tile_addr[t].reshape(-1)[slot]
            for p in range(layer.positions):
                oy, ox = divmod(p, layer.wo)
                inside = 0 <= oy + dy < layer.hin and 0 <= ox + dx < layer.win
                got = flat[oy * layer.win + ox + off] if inside else 0
                assert got == cols[p, j], (t, slot, p)
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize("which", ["lenet", "saturating", "vgg"])
def test_hls_cpp_is_bit_exact_with_the_golden_model(which, request, tmp_path):
    from ccflow.cnn_hls import check_cnn_hls, render_cnn_hls

    design, _ = request.getfixturevalue(which)
    render_cnn_hls(design, tmp_path)
    x = _images(12, design.in_shape, scale=SCALE[which])
    if which == "saturating":
        golden = CnnGolden(design)
        golden.run(x)
        assert golden.sat.by_site.get("accumulator", 0) > 0
    result = check_cnn_hls(design, tmp_path, x)
    assert result.bit_exact, result.first_mismatch
    assert result.images_checked == 12
    prefix = design.array.module_prefix  # vgg's: Vitis HLS prefixes the modules it exports the same way
    assert ("config_rtl -module_prefix cnn0_" in (tmp_path / "run_hls.tcl").read_text()) == (prefix == "cnn0_")


def test_hls_check_fails_on_a_corrupted_rom(lenet, tmp_path):
    from ccflow.cnn_hls import check_cnn_hls, render_cnn_hls

    design, _ = lenet
    render_cnn_hls(design, tmp_path)
    rom = tmp_path / "ccflow_rom.inc"
    text = rom.read_text()
    head = "BLOCK_SHIFT[N_BLOCKS][ROWS] = {"
    row0 = text.index("{", text.index(head) + len(head))  # block 0's shifts: the first convolution
    end = text.index("}", row0)
    shifts = [int(v) + 2 for v in text[row0 + 1:end].split(",")]
    rom.write_text(text[:row0 + 1] + ",".join(map(str, shifts)) + text[end:])
    result = check_cnn_hls(design, tmp_path, _images(6))
    assert not result.bit_exact and "image" in result.first_mismatch


@pytest.mark.parametrize("which", ["lenet", "vgg"])
def test_rtl_is_lint_clean(which, request):
    from ccflow.simulate import lint_verilator

    _, out = request.getfixturevalue(which)
    lint = lint_verilator(out)
    assert lint.clean, lint.output[-3000:]


def test_a_module_prefix_names_every_cnn_module_and_file(lenet, vgg):
    plain = sorted(p.name for p in lenet[1].glob("*.v"))
    assert sorted(p.name for p in vgg[1].glob("*.v")) == [f"cnn0_{name}" for name in plain]
    for path in vgg[1].glob("*.v"):
        assert re.search(rf"^module {path.stem} ", path.read_text(), re.M), path.name
    assert "toplevel: cnn0_ccflow_top" in (vgg[1] / "ccflow.core").read_text()


def test_module_bodies_are_static_only_parameter_defaults_differ(lenet, saturating, vgg, static_bodies):
    """Generate data, not code: LeNet-5, its 24-bit-accumulator twin and vgg-small (other layers,
    channels, map sizes and widths, a module prefix) render every CNN module to the same text but
    for integer parameter defaults; the network itself is layers.mem, blocks.mem and taps.mem."""
    reference = static_bodies(lenet[1])
    assert "ccflow_cnn_ctrl" in reference
    assert static_bodies(saturating[1]) == reference
    assert static_bodies(vgg[1], "cnn0_") == reference


def test_sizes_are_parameters_with_the_designs_values(lenet, rtl_sizes):
    """No header, no `define: each CNN module declares the sizes it uses, and a name has the
    design's value (cnn_generate.rtl_context) wherever it is declared."""
    from ccflow.cnn_generate import rtl_context

    design, out = lenet
    ctx = rtl_context(design)
    sizes = {name: values for name, values in rtl_sizes(out).items() if isinstance(ctx.get(name.lower()), int)}
    assert {"ROWS", "COLS", "ALPHA", "ACT_BITS", "CLASSES", "BLOCK_BITS"} <= set(sizes)
    assert all(values == {ctx[name.lower()]} for name, values in sizes.items()), sizes


@pytest.mark.parametrize("which", ["lenet", "vgg"])
def test_controller_slices_layer_words_where_python_packs_them(which, request):
    """layers.mem's layout has two writers: cnn_generate._layer_fields packs each field, ccflow_cnn_ctrl
    slices it at its O_* offsets. Every field the controller reads sits at the offset and has the width
    that Python packs it with, and the word is as wide, in each design's own sizes."""
    from ccflow.cnn_generate import rtl_context

    design, out = request.getfixturevalue(which)
    ctx = rtl_context(design)
    code = re.sub(r"//.*", "", next(out.glob("*ccflow_cnn_ctrl.v")).read_text())
    sizes: dict[str, int] = {}
    for name, expr in re.findall(r"\b(?:parameter|localparam)\s+integer\s+(\w+)\s*=\s*([^,;\n]+)", code):
        if re.fullmatch(r"[\w\s+]+", expr):  # numbers, names and sums: the layout's offsets and widths
            sizes[name] = eval(expr, {"__builtins__": {}}, sizes)
    read = {name: (sizes[name], sizes[width] if width else 1)
            for name, width in re.findall(r"layer_word\[(O_\w+)(?:\s*\+:\s*(\w+))?\]", code)}
    packed, offset = {}, 0
    for name, bits in ctx["layer_fields"]:
        packed[f"O_{name.upper()}"] = (offset, bits)
        offset += bits
    assert read == packed
    assert sizes["LAYER_WORD_BITS"] == offset == ctx["layer_word_bits"]


@pytest.mark.sim
@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("which,images", [("lenet", 5), ("saturating", 3), ("vgg", 2)])
def test_rtl_is_bit_exact_on_both_simulators(sim, which, images, request, tmp_path_factory):
    from ccflow.simulate import run_cnn_top

    design, out = request.getfixturevalue(which)
    work = tmp_path_factory.mktemp(f"cnn-sim-{sim}-{which}")
    x = _images(images, design.in_shape, seed=4, scale=SCALE[which])
    result = run_cnn_top(out, x, sim=sim, work_dir=work, stalls=True, free_images=2)
    assert result.passed, f"{result.message} (log {result.log_path})"
    assert result.images_checked == images
    assert result.cycles_per_image == image_cycles(design)["total"]  # the cycle model is the hardware's


@pytest.mark.sim
def test_a_corrupted_weight_rom_fails_the_bench(lenet, tmp_path):
    import shutil

    from ccflow.simulate import run_cnn_top

    design, out = lenet
    bad = tmp_path / "rtl"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("sim"))
    lines = (bad / "weights.mem").read_text().split()
    lines[0] = "".join("7" if ch != "7" else "1" for ch in lines[0])  # every cell of tile 0 changed
    (bad / "weights.mem").write_text("\n".join(lines) + "\n")
    result = run_cnn_top(bad, _images(2), sim="icarus", stalls=False)
    assert not result.passed and "logit" in result.message


@pytest.mark.sim
def test_flow_builds_simulates_and_checks_a_trained_lenet(tmp_path, capsys):
    """ccflow train -> rtl -> sim -> hls -> summary on the lenet5 preset (a short run)."""
    from ccflow.cli import main

    train = tmp_path / "train"
    assert main(["train", "--config", "lenet5", "--out", str(train), "--threads", "1", "--set", "train.epochs=3",
                 "--set", "train.max_batches=20", "--set", "prune.start_epoch=1", "--set", "prune.ramp_epochs=1",
                 "--set", "combine.epochs=[2]"]) == 0
    rtl = tmp_path / "rtl"
    assert main(["rtl", "--checkpoint", str(train / "model.pt"), "--out", str(rtl), "--images", "3"]) == 0
    assert main(["sim", "--rtl", str(rtl), "--sim", "icarus"]) == 0
    assert main(["hls", "--rtl", str(rtl)]) == 0
    capsys.readouterr()
    assert main(["summary", "--rtl", str(rtl)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy   float" in out and "icarus          bit-exact on 3 images" in out
    assert "HLS C++ (g++)   bit-exact on 3 images" in out
