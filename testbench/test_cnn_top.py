"""cocotb bench of the CNN ccflow_top against the integer golden model, bit for bit, over images.

Separate coroutines in cocotb's reference-model style: the *driver* streams each image's pixels
(the golden model's input format) into s_axis, with random gaps when ``stalls`` is set; the
*monitor* takes every logits beat from m_axis (m_axis_tready held low for random stretches when
``stalls`` is set, and the word must not change while held); the *scoreboard* compares each beat
with :class:`ccflow.cnn_quantize.CnnGolden`'s logits of the same image. Widths come from the design
and from the DUT's ports. Cycle figures (first images, no stalls): latency from an image's first
pixel to its logits, and the interval between two images' logits.

Inputs are driven and outputs sampled at the falling clock edge.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.queue import Queue
from cocotb.triggers import FallingEdge

from bench_common import bench_args, pack, rtl_dir, unpack, write_results
from ccflow.cnn_quantize import CnnDesign, CnnGolden


class CnnBench:
    def __init__(self, dut, design: CnnDesign, args: dict):
        self.dut, self.design, self.args = dut, design, args
        self.act_bits = design.array.formats.act_bits
        self.classes = design.classes
        images = np.asarray(args["images"], dtype=np.float64).reshape((-1,) + tuple(design.in_shape))
        golden = CnnGolden(design)
        self.pixels = golden.input(images).reshape(len(images), -1)  # what the driver sends
        self.expected = golden.run(images)  # [N, classes]
        self.stalls = bool(args.get("stalls", False))
        self.free = min(len(images), int(args.get("free_images", len(images))))
        self.rng = random.Random(int(args.get("seed", 1)))
        self.cycle = 0
        self.first_pixel = {}  # image -> cycle its first pixel was taken
        self.out_cycle = {}  # image -> cycle its logits were taken
        self.results = Queue()
        self.message = ""
        assert len(dut.s_axis_tdata) >= self.act_bits, "s_axis_tdata narrower than ACT_BITS"
        assert len(dut.m_axis_tdata) >= self.classes * self.act_bits, "m_axis_tdata narrower than the logits"

    def stall(self, image: int) -> bool:
        return self.stalls and image >= self.free and self.rng.random() < 0.3

    async def clock(self):
        while True:
            await FallingEdge(self.dut.clk_i)
            self.cycle += 1

    async def driver(self):
        """Every image's pixels in order, one per accepted beat."""
        dut = self.dut
        presenting = False  # a beat is on the bus and not yet taken: it stays (AXI4-Stream)
        for i, image in enumerate(self.pixels):
            k = 0
            while k < len(image):
                await FallingEdge(dut.clk_i)
                if not presenting and self.stall(i):
                    dut.s_axis_tvalid.value = 0
                    continue
                dut.s_axis_tdata.value = pack([image[k]], self.act_bits)
                dut.s_axis_tvalid.value = 1
                presenting = dut.s_axis_tready.value != 1  # tready depends on state only: taken at the next edge
                if not presenting:
                    self.first_pixel.setdefault(i, self.cycle)
                    k += 1
        await FallingEdge(dut.clk_i)
        dut.s_axis_tvalid.value = 0

    async def monitor(self):
        """Each logits beat; a held beat must not change."""
        dut = self.dut
        held = None
        while True:
            await FallingEdge(dut.clk_i)
            if dut.m_axis_tvalid.value != 1:
                held = None
                continue
            if not dut.m_axis_tdata.value.is_resolvable:
                await self.results.put(("X", None))
                return
            word = int(dut.m_axis_tdata.value)
            if held is not None and word != held:
                await self.results.put(("changed", word))
                return
            held = word
            ready = 0 if self.stall(len(self.out_cycle)) else 1  # the image whose logits these are
            dut.m_axis_tready.value = ready
            if ready:  # taken at the next edge
                await self.results.put(("logits", word))
                held = None

    async def scoreboard(self) -> bool:
        for i, want in enumerate(self.expected):
            kind, word = await self.results.get()
            if kind != "logits":
                self.message = f"image {i}: m_axis_tdata {'has X/Z bits' if kind == 'X' else 'changed while held'}"
                return False
            self.out_cycle[i] = self.cycle
            got = unpack(word, self.classes, self.act_bits)
            if not np.array_equal(got, want):
                bad = int(np.flatnonzero(got != want)[0])
                self.message = (f"image {i}: logit {bad} is {got[bad]}, golden model {want[bad]} "
                                f"(got {got.tolist()}, want {want.tolist()})")
                return False
        return True

    def figures(self) -> dict:
        free = [i for i in range(self.free) if i in self.first_pixel and i in self.out_cycle]
        latency = [self.out_cycle[i] - self.first_pixel[i] for i in free]
        gaps = [self.out_cycle[i] - self.out_cycle[i - 1] for i in free if i >= 1]
        return {"cycles_per_image": float(np.mean(gaps)) if gaps else 0.0,
                "latency": float(np.mean(latency)) if latency else 0.0}


@cocotb.test()
async def cnn_top_matches_golden(dut):
    args = bench_args()
    design = CnnDesign.load(rtl_dir())
    bench = CnnBench(dut, design, args)
    cocotb.start_soon(Clock(dut.clk_i, 10, unit="ns").start())
    dut.rst_ni.value = 0
    dut.s_axis_tvalid.value = 0
    dut.s_axis_tdata.value = 0
    dut.m_axis_tready.value = 1
    for _ in range(3):
        await FallingEdge(dut.clk_i)
    dut.rst_ni.value = 1
    cocotb.start_soon(bench.clock())
    cocotb.start_soon(bench.driver())
    cocotb.start_soon(bench.monitor())
    budget = int(args.get("max_cycles", 0)) or 200_000 * len(bench.expected)
    scoreboard = cocotb.start_soon(bench.scoreboard())
    while not scoreboard.done() and bench.cycle < budget:
        await FallingEdge(dut.clk_i)
    passed = scoreboard.done() and scoreboard.result()
    if not scoreboard.done():
        bench.message = f"timeout: {len(bench.out_cycle)} of {len(bench.expected)} images' logits after {budget} cycles"
        scoreboard.cancel()
    write_results(args, {"passed": bool(passed), "images_checked": len(bench.out_cycle) if passed else
                         max(0, len(bench.out_cycle) - 1), "message": bench.message, **bench.figures()})
    assert passed, bench.message
