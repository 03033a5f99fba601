"""cocotb bench of ccflow_pointwise against the golden model's ``_pointwise``, bit for bit.

Row blocks of random gate inputs z (a share of them at the extremes, so the LUT index clamps) are
driven layer by layer, several steps, blocks of a layer as close as the unit's phases allow or with
random gaps, as the accumulator would deliver them, each with its blocks.mem descriptor. Checked per layer: every unit's
new h (act address from bank and word, value, and the copy = bit 0 of the step's token tag), that padding lanes
write nothing, one commit pulse for the layer together with its last block, and the saturation
events (cell and hidden updates of real units, all under the blocks' tag) against the golden model's count. The cell state
is checked through h: h = o * tanh(c'), and every step starts from the c the unit wrote before. Use it with LUT ROMs holding out-of-range values and a
narrow cell format to make the saturations happen (tests/test_sim.py does).
"""

from __future__ import annotations

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from bench_common import bench_args, load_design, pack, random_signed, unpack, write_results
from ccflow.generate import block_descriptors, rtl_context
from ccflow.golden import GoldenModel


@cocotb.test()
async def pointwise_matches_golden(dut):
    args = bench_args()
    design = load_design()
    ctx = rtl_context(design)
    fmt = design.array.formats
    rows, lanes, ab = design.array.rows, ctx["pw_lanes"], fmt.act_bits
    phases = ctx["pw_phases"]  # a block takes this many cycles: blocks come at least that far apart
    kb, lb, alpha, ev_bits = ctx["bank_bits"], ctx["local_bits"], design.array.alpha, ctx["pw_event_bits"]
    widths = [1, 1, ctx["real_bits"], ctx["index_bits"], ctx["mat_bits"], kb, lb]
    descs = []
    for row in block_descriptors(design):
        word, shift = 0, 0
        for v, w in zip(row, widths):
            word |= int(v) << shift
            shift += w
        descs.append(word)
    rng = np.random.default_rng(int(args.get("seed", 1)))
    golden = GoldenModel(design)
    results = {"passed": False, "message": "", "layers_checked": 0, "sat_events": 0, "h_checked": 0}

    def fail(msg):
        results["message"] = msg
        raise AssertionError(msg)

    Clock(dut.clk_i, 10, unit="ns").start()
    dut.rst_ni.value = 0
    dut.valid_i.value = 0
    dut.desc_i.value = 0
    dut.tag_i.value = 0
    dut.z_i.value = 0
    await FallingEdge(dut.clk_i)
    await FallingEdge(dut.clk_i)
    dut.rst_ni.value = 1

    events = 0
    writes: dict[int, int] = {}

    tags = ctx["tags"]
    live_tag = 0  # the tag of the blocks in flight: events under any other tag are wrong

    async def cycle(valid, block=0, tag=0, z=None):
        """Drive one cycle's inputs at the falling edge, after sampling the outputs there."""
        nonlocal events
        we = int(dut.h_we_o.value)
        if we:
            bank = unpack(dut.h_bank_o.value.to_unsigned(), lanes, kb, signed=False)
            word = unpack(dut.h_word_o.value.to_unsigned(), lanes, lb, signed=False)
            h = unpack(dut.h_o.value.to_unsigned(), lanes, ab)
            copy = int(dut.h_copy_o.value)
            for u in range(lanes):
                if we >> u & 1:
                    a = int(word[u]) * alpha + int(bank[u])
                    if a in writes:
                        fail(f"h address {a} written twice in one layer")
                    writes[a] = (int(h[u]), copy)
        word = int(dut.sat_events_o.value)  # the count of tag k at [k*ev_bits]
        for k in range(tags):
            n = (word >> (k * ev_bits)) & ((1 << ev_bits) - 1)
            if n and k != live_tag:
                fail(f"{n} saturation events counted under tag {k}, the blocks in flight have tag {live_tag}")
            events += n
        commit = (1, int(dut.commit_mat_o.value)) if int(dut.commit_o.value) else (0, 0)
        dut.valid_i.value = int(valid)
        dut.desc_i.value = descs[block] if valid else descs[int(rng.integers(0, design.n_blocks))]
        dut.tag_i.value = int(tag) if valid else int(rng.integers(0, tags))
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
                live_tag = step % tags  # bit 0: the step's parity, the copy h goes to
                for b in range(m.n_blocks):
                    commits.append(await cycle(True, m.block_start + b, live_tag, z[b * rows:(b + 1) * rows]))
                    for _ in range(phases - 1 + int(rng.choice([0, 0, 0, 1, 2]))):
                        commits.append(await cycle(False))
                for _ in range(ctx["h_stage"] + 3):  # drain: h in P{h_stage} (of the last phase), events two cycles later
                    commits.append(await cycle(False))
                pulses = [c for c in commits if c[0]]
                if len(pulses) != 1 or pulses[0][1] != k:
                    fail(f"step {step} {m.name}: commit pulses {pulses}, expected one for layer {k}")
                want = {m.out_base + j: (int(expected_h[j]), step % 2) for j in range(m.hidden)}
                if set(writes) != set(want):
                    extra = sorted(set(writes) - set(want))
                    missing = sorted(set(want) - set(writes))
                    fail(f"step {step} {m.name}: h addresses written {sorted(writes)[:8]}..., "
                         f"unexpected {extra[:8]}, missing {missing[:8]}")
                for a, v in want.items():
                    if writes[a] != v:
                        fail(f"step {step} {m.name}: unit {a - m.out_base} (act address {a}): expected (h, copy) "
                             f"{v}, got {writes[a]}")
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
