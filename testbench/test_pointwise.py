"""cocotb bench of ccflow_pointwise against the golden model's ``_pointwise``, bit for bit.

Row blocks of random gate inputs z (a share of them at the extremes, so the LUT index clamps) are
driven layer by layer, several steps, blocks of a layer back to back or with random gaps, as the
accumulator would deliver them. Checked per layer: every unit's new h (address and value), that
padding lanes write nothing, one commit pulse for the layer together with its last block, the
cell-state memory after the layer, and the saturation events (cell and hidden updates of real
units) against the golden model's count. Use it with LUT ROMs holding out-of-range values and a
narrow cell format to make the saturations happen (tests/test_sim.py does).
"""

from __future__ import annotations

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from bench_common import bench_args, load_design, pack, random_signed, unpack, write_results
from ccflow.generate import rtl_context
from ccflow.golden import GoldenModel


@cocotb.test()
async def pointwise_matches_golden(dut):
    args = bench_args()
    design = load_design()
    ctx = rtl_context(design)
    fmt = design.array.formats
    rows, units, ab, cb = design.array.rows, ctx["units"], fmt.act_bits, fmt.cell_bits
    hw_bits = ctx["haddr_bits"]
    rng = np.random.default_rng(int(args.get("seed", 1)))
    golden = GoldenModel(design)
    results = {"passed": False, "message": "", "layers_checked": 0, "sat_events": 0, "h_checked": 0}

    def fail(msg):
        results["message"] = msg
        raise AssertionError(msg)

    Clock(dut.clk_i, 10, unit="ns").start()
    dut.rst_ni.value = 0
    dut.valid_i.value = 0
    dut.block_i.value = 0
    dut.mat_i.value = 0
    dut.z_i.value = 0
    await FallingEdge(dut.clk_i)
    await FallingEdge(dut.clk_i)
    dut.rst_ni.value = 1

    events = 0
    writes: dict[int, int] = {}

    async def cycle(valid, block=0, mat=0, z=None):
        """Drive one cycle's inputs at the falling edge, after sampling the outputs there."""
        nonlocal events
        we = int(dut.h_we_o.value)
        if we:
            addr = unpack(dut.h_addr_o.value.to_unsigned(), units, hw_bits, signed=False)
            h = unpack(dut.h_o.value.to_unsigned(), units, ab)
            for u in range(units):
                if we >> u & 1:
                    a = int(addr[u])
                    if a in writes:
                        fail(f"h address {a} written twice in one layer")
                    writes[a] = int(h[u])
        events += int(dut.sat_events_o.value)
        commit = (int(dut.commit_o.value), int(dut.commit_layer_o.value))
        dut.valid_i.value = int(valid)
        dut.block_i.value = int(block) if valid else int(rng.integers(0, design.n_blocks))
        dut.mat_i.value = int(mat)
        dut.z_i.value = pack(z if valid else rng.integers(-100, 100, rows), ab)
        await FallingEdge(dut.clk_i)
        return commit

    try:
        for step in range(int(args.get("steps", 4))):
            for m in design.lstm_layers:
                k = design.matrices.index(m)
                share = 0.5 if step % 2 else 0.1
                z = random_signed(rng, ab, m.n_blocks * rows, extreme_share=share)
                if step % 3 == 0:  # mostly in the LUT's useful range
                    z = np.where(rng.random(z.shape) < 0.8, rng.integers(-6 << fmt.act_frac, 6 << fmt.act_frac,
                                                                          z.shape), z)
                before = golden.sat.total
                expected_h = golden._pointwise(m, z[None].astype(np.int64))[0]
                writes.clear()
                commits = []
                for b in range(m.n_blocks):
                    commits.append(await cycle(True, m.block_start + b, k, z[b * rows:(b + 1) * rows]))
                    for _ in range(int(rng.choice([0, 0, 0, 1, 2]))):
                        commits.append(await cycle(False))
                for _ in range(4):  # drain the pipeline
                    commits.append(await cycle(False))
                pulses = [c for c in commits if c[0]]
                if len(pulses) != 1 or pulses[0][1] != k:
                    fail(f"step {step} {m.name}: commit pulses {pulses}, expected one for layer {k}")
                want = {m.out_base + j: int(expected_h[j]) for j in range(m.hidden)}
                if set(writes) != set(want):
                    extra = sorted(set(writes) - set(want))
                    missing = sorted(set(want) - set(writes))
                    fail(f"step {step} {m.name}: h addresses written {sorted(writes)[:8]}..., "
                         f"unexpected {extra[:8]}, missing {missing[:8]}")
                for a, v in want.items():
                    if writes[a] != v:
                        fail(f"step {step} {m.name}: unit {a - m.out_base} (act address {a}): expected h {v}, "
                             f"got {writes[a]}")
                cells = unpack(dut.cell_q.value.to_unsigned(), design.cell_size, cb)
                bad = np.flatnonzero(cells != golden.cell[0])
                if bad.size:
                    i = int(bad[0])
                    fail(f"step {step} {m.name}: cell state {i}: expected {int(golden.cell[0, i])}, got {int(cells[i])}")
                if events != golden.sat.total:
                    fail(f"step {step} {m.name}: {events} saturation events, golden model {golden.sat.total} "
                         f"({golden.sat.total - before} in this layer; {golden.sat.by_site})")
                results["layers_checked"] += 1
                results["h_checked"] += len(want)
        results["sat_events"] = events
        results["sat_by_site"] = dict(golden.sat.by_site)
        results["passed"] = True
    finally:
        write_results(args, results)
