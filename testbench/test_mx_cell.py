"""cocotb bench of mx_cell: product_o = weight_i * in_i[sel_i], exactly, CELL_STAGES cycles later.

One vector per cycle (the cell is pipelined: select mux, operands, multiply, product registered): random
weights, selects and inputs with a share of extremes, plus an exhaustive sweep of every select
against the extreme weight x input products. A select at or beyond alpha (possible when alpha is
not a power of two; the packer never emits one) multiplies 0. Widths come from array_config.json.
"""

from __future__ import annotations

import itertools
import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from bench_common import bench_args, load_array, pack, random_signed, signed_range, write_results
from ccflow.generate import CELL_STAGES as LATENCY  # cycles from the inputs to product_o



@cocotb.test()
async def mx_cell_multiplies_the_selected_input(dut):
    args = bench_args()
    arr = load_array()
    fmt = arr.formats
    wb, ab, sb, alpha = fmt.weight_bits, fmt.act_bits, arr.sel_bits, arr.alpha
    rng = np.random.default_rng(int(args.get("seed", 1)))
    w_lo, w_hi = signed_range(wb)
    a_lo, a_hi = signed_range(ab)
    results = {"passed": False, "message": "", "alpha": alpha, "vectors": 0}

    vectors = []
    for sel in range(1 << sb):  # every select against the extreme products
        for w, x in itertools.product((w_lo, w_hi, -1, 0, 1), (a_lo, a_hi, -1, 1)):
            inputs = random_signed(rng, ab, alpha)
            if sel < alpha:
                inputs[sel] = x
            vectors.append((w, sel, inputs))
    for _ in range(int(args.get("vectors", 2000))):
        vectors.append((int(random_signed(rng, wb, 1)[0]), int(rng.integers(0, alpha)), random_signed(rng, ab, alpha)))

    Clock(dut.clk_i, 10, unit="ns").start()
    checked = 0
    try:
        # Vector k is driven before rising edge k and read at the falling edge after edge k + 1.
        for k in range(len(vectors) + 1):
            if k < len(vectors):
                w, sel, inputs = vectors[k]
                dut.weight_i.value = int(w) & ((1 << wb) - 1)
                dut.sel_i.value = int(sel)
                dut.in_i.value = pack(inputs, ab)
            await FallingEdge(dut.clk_i)
            if k >= LATENCY - 1 and k - (LATENCY - 1) < len(vectors):
                w, sel, inputs = vectors[k - (LATENCY - 1)]
                want = int(w) * (int(inputs[sel]) if sel < alpha else 0)
                got = dut.product_o.value.to_signed()
                if got != want:
                    msg = (f"alpha {alpha}: weight {w}, sel {sel}, inputs {list(map(int, inputs))}: "
                           f"expected product_o {want}, got {got}")
                    results["message"] = msg
                    raise AssertionError(msg)
                checked += 1
        results["passed"] = checked == len(vectors)
    finally:
        results["vectors"] = checked
        write_results(args, results)
