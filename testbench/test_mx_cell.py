"""cocotb bench of mx_cell: psum_o = psum_i + weight_i * in_i[sel_i], exactly.

Random weights, selects, inputs and incoming partial sums, with a share of extremes, plus an
exhaustive sweep of every select against the extreme weight x input products. A select at or
beyond alpha (possible when alpha is not a power of two; the packer never emits one) multiplies 0.
The widths come from array_config.json.
"""

from __future__ import annotations

import itertools

import cocotb
import numpy as np
from cocotb.triggers import Timer

from bench_common import bench_args, load_array, pack, random_signed, signed_range, write_results
from ccflow.generate import psum_bits


@cocotb.test()
async def mx_cell_multiplies_the_selected_input(dut):
    args = bench_args()
    arr = load_array()
    fmt = arr.formats
    wb, ab, sb, alpha, pb = fmt.weight_bits, fmt.act_bits, arr.sel_bits, arr.alpha, psum_bits(arr)
    rng = np.random.default_rng(int(args.get("seed", 1)))
    max_product = (1 << (wb - 1)) * (1 << (ab - 1))
    p_lo, p_hi = signed_range(pb)
    p_lo, p_hi = p_lo + max_product, p_hi - max_product  # a partial sum that cannot overflow
    w_lo, w_hi = signed_range(wb)
    a_lo, a_hi = signed_range(ab)
    checked = 0
    results = {"passed": False, "message": "", "alpha": alpha, "vectors": 0}

    async def check(weight, sel, inputs, psum_in):
        nonlocal checked
        dut.weight_i.value = int(weight) & ((1 << wb) - 1)
        dut.sel_i.value = int(sel)
        dut.in_i.value = pack(inputs, ab)
        dut.psum_i.value = int(psum_in) & ((1 << pb) - 1)
        await Timer(1, unit="ns")
        got = dut.psum_o.value.to_signed()
        operand = int(inputs[sel]) if sel < alpha else 0
        expected = int(psum_in) + int(weight) * operand
        if got != expected:
            msg = (f"alpha {alpha}: weight {weight}, sel {sel}, inputs {list(map(int, inputs))}, psum_i {psum_in}: "
                   f"expected psum_o {expected}, got {got}")
            results["message"] = msg
            raise AssertionError(msg)
        checked += 1

    try:
        # every select against the extreme products (and the other inputs set to something else)
        for sel in range(1 << sb):
            for w, x, p in itertools.product((w_lo, w_hi, -1, 0, 1), (a_lo, a_hi, -1, 1), (p_lo, 0, p_hi)):
                inputs = random_signed(rng, ab, alpha)
                if sel < alpha:
                    inputs[sel] = x
                await check(w, sel, inputs, p)
        # random vectors
        for _ in range(int(args.get("vectors", 2000))):
            w = int(random_signed(rng, wb, 1)[0])
            sel = int(rng.integers(0, alpha))
            p = int(rng.integers(p_lo, p_hi + 1)) if rng.random() < 0.8 else int(rng.choice([p_lo, p_hi, 0]))
            await check(w, sel, random_signed(rng, ab, alpha), p)
        results["passed"] = True
    finally:
        results["vectors"] = checked
        write_results(args, results)
