"""cocotb bench of mx_array: the packed array computes the original (combine-pruned) matrix.

For each case: a random sparse float matrix, column-combined with ccflow.combine.combine_columns
(alpha, gamma, row blocks of the array height), combine-pruned by the packing's mask and quantized
to weight_bits. The bench lays the groups out as tiles itself (independently of the quantizer):
the groups of all blocks, in order, are dealt into tiles of COLS array columns, and a tile that
holds the end of one block and the start of the next is split there. Array column c carries one
group, each cell the row's one weight of the group and its select; unused cells get weight 0 and a
random select, unused inputs random values. The tiles are driven one per cycle; every tile's two
row sums (columns before / after the split) must equal the numpy products, and the row sums
accumulated per block must equal the integer matrix-vector product W @ x. The array is pipelined:
the row sums of the tile driven before rising edge k are read after edge k + 2 + TREE_STAGES.
"""

from __future__ import annotations

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from bench_common import bench_args, load_array, load_design, pack, random_signed, unpack, write_results
from ccflow.combine import combine_columns
from ccflow.generate import psum_bits, rtl_context


def build_tiles(wq: np.ndarray, packing, arr, x: np.ndarray, rng):
    """[(block, split, weight [R,C], sel [R,C], inputs [C, alpha])] in block order."""
    fmt = arr.formats
    # (block, group) in execution order; an empty block still gets an (empty) column
    columns = [(b, g) for b, (_, _, groups) in enumerate(packing.blocks) for g in (list(groups) or [()])]
    tiles = []
    i = 0
    while i < len(columns):
        chunk = columns[i:i + arr.cols]
        first_block = chunk[0][0]
        chunk = [c for c in chunk if c[0] <= first_block + 1]  # at most two blocks per tile
        i += len(chunk)
        split = next((k for k, (b, _) in enumerate(chunk) if b != first_block), arr.cols)
        weight = np.zeros((arr.rows, arr.cols), dtype=np.int64)
        sel = rng.integers(0, arr.alpha, (arr.rows, arr.cols))
        inputs = random_signed(rng, fmt.act_bits, arr.cols * arr.alpha).reshape(arr.cols, arr.alpha)
        for c, (block, group) in enumerate(chunk):
            start, stop, _ = packing.blocks[block]
            cols = np.asarray(group, dtype=np.int64)
            inputs[c, : len(cols)] = x[cols]
            sub = wq[start:stop, cols]
            for r in range(stop - start):
                nz = np.flatnonzero(sub[r])
                assert len(nz) <= 1, "the packing left two weights of one group in a row"
                if len(nz):
                    weight[r, c] = sub[r, nz[0]]
                    sel[r, c] = nz[0]
        tiles.append((first_block, split, weight, sel, inputs))
    return tiles


@cocotb.test()
async def packed_array_computes_the_matrix(dut):
    args = bench_args()
    arr = load_array()
    fmt = arr.formats
    rows, cols, wb, ab, sb, pb = arr.rows, arr.cols, fmt.weight_bits, fmt.act_bits, arr.sel_bits, psum_bits(arr)
    rng = np.random.default_rng(int(args.get("seed", 1)))
    results = {"passed": False, "message": "", "cases": [], "tiles": 0}

    def fail(msg):
        results["message"] = msg
        raise AssertionError(msg)

    latency = rtl_context(load_design())["array_stages"] - 1  # falling edges from a tile to its sums
    Clock(dut.clk_i, 10, unit="ns").start()
    dut.weight_i.value = 0
    dut.sel_i.value = 0
    dut.in_i.value = 0
    dut.split_i.value = cols
    await FallingEdge(dut.clk_i)

    def drive(tile):
        _, split, weight, sel, inputs = tile
        dut.weight_i.value = pack(weight.reshape(-1), wb)
        dut.sel_i.value = pack(sel.reshape(-1), sb)
        dut.in_i.value = pack(inputs.reshape(-1), ab)
        dut.split_i.value = split

    try:
        for case in args["cases"]:
            m_rows, m_cols = case["shape"]
            alpha, gamma = int(case["alpha"]), float(case["gamma"])
            dense = rng.normal(0, 1, (m_rows, m_cols)) * (rng.random((m_rows, m_cols)) >= case["sparsity"])
            packing = combine_columns(dense, alpha, gamma, row_block=rows)
            kept = np.where(packing.mask, dense, 0.0)
            if gamma == 0 and not np.array_equal(kept, dense):
                fail(f"conflict-free combining lost weights for case {case}")
            scale = ((1 << (wb - 1)) - 1) / max(np.abs(kept).max(), 1e-12)
            wq = np.rint(kept * scale).astype(np.int64)
            for _ in range(int(case.get("vectors", 2))):
                x = random_signed(rng, ab, m_cols, extreme_share=0.3)
                tiles = build_tiles(wq, packing, arr, x, rng)
                acc = np.zeros(len(packing.blocks) * rows, dtype=object)
                for k in range(len(tiles) + latency):
                    if k < len(tiles):
                        drive(tiles[k])
                    await FallingEdge(dut.clk_i)
                    t = k - latency
                    if t < 0:
                        continue
                    got_a = unpack(dut.rowsum_a_o.value.to_unsigned(), rows, pb)
                    got_b = unpack(dut.rowsum_b_o.value.to_unsigned(), rows, pb)
                    block, split, weight, sel, inputs = tiles[t]
                    prod = weight * inputs[np.arange(cols)[None, :], sel]
                    for part, got, exp in (("A", got_a, prod[:, :split].sum(axis=1)),
                                           ("B", got_b, prod[:, split:].sum(axis=1))):
                        bad = np.flatnonzero(got != exp)
                        if bad.size:
                            r = int(bad[0])
                            fail(f"case {case}: tile {t} (block {block}, split {split}) row {r}: expected "
                                 f"row sum {part} {int(exp[r])}, got {int(got[r])}")
                    acc[block * rows:(block + 1) * rows] += got_a.astype(object)
                    if split < cols:
                        acc[(block + 1) * rows:(block + 2) * rows] += got_b.astype(object)
                    results["tiles"] += 1
                want = wq.astype(object) @ x.astype(object)
                bad = [i for i in range(m_rows) if acc[i] != want[i]]
                if bad:
                    fail(f"case {case}: matrix row {bad[0]}: W @ x = {want[bad[0]]}, array accumulated {acc[bad[0]]}")
            results["cases"].append({**case, "groups": packing.groups_total, "tiles": len(tiles),
                                     "utilization": round(float(packing.utilization), 3)})
        results["passed"] = True
    finally:
        write_results(args, results)
