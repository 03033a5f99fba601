"""Benchmark column combining against the naive greedy merge (run: python bench/bench_combine.py).

Three tables:
1. ours next to the naive greedy merge on random 80%-sparse matrices, alpha 8, gamma 0.5;
2. ours on every LSTM matrix [W_ih | W_hh] of the ptbc-paper and enwik8-paper models, with the
   group count of the same greedy merge (``greedy_combine_reference``: the same decisions, computed
   incrementally, checked against the naive one in table 1);
3. the same models with row_block=16 (the default array height of ``make train``).

Matrices: Gaussian weights magnitude-pruned to 80% zeros, float32 like a torch checkpoint,
seeded. Times are wall-clock seconds, best of --repeat runs for ours (CPU seconds in brackets:
a busy machine inflates the wall time), one run for the naive greedy. The naive greedy needs
about 16 minutes on the smallest paper matrix (800x1200), so it runs there only with
--naive-paper. ``--quick`` stops the naive greedy at 800x240 and skips the row-split greedy
count (for CI); the full run takes about 4 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from ccflow.combine import combine_columns, greedy_combine_reference

ALPHA, GAMMA, SPARSITY = 8, 0.5, 0.8
RANDOM_SHAPES = [(400, 120), (800, 240), (1200, 360), (1600, 480)]
MODELS = {  # name: (emsize, nhid); 3 layers emsize->nhid, nhid->nhid, nhid->emsize
    "ptbc-paper": (200, 1000),
    "enwik8-paper": (400, 1840),
}
TARGETS = {"ptbc-paper": 1.0, "enwik8-paper": 3.0}  # seconds for all LSTM matrices of a model


def naive_greedy(weight: np.ndarray, alpha: int, gamma: float) -> list[tuple[int, ...]]:
    """The baseline: after every merge, recompute every pairwise overlap between current groups.

    Start with each nonzero column as its own group; merge the feasible pair (merged size <= alpha,
    merged conflicts <= floor(gamma * rows)) with the fewest merged conflicts, ties to the smaller
    merged size, then the lowest group indices (groups ordered by lowest column); stop when no pair
    is feasible. Per merge it sums max(0, a + b - 1) over every row for every pair of groups, as
    the public ASPLOS'19 code does (there with torch broadcasting), in numpy int16.
    """
    nz = np.asarray(weight) != 0
    rows = nz.shape[0]
    budget = int(np.floor(gamma * rows))
    groups = [[int(c)] for c in np.flatnonzero(nz.any(axis=0))]
    counts = nz[:, [g[0] for g in groups]].astype(np.int16)  # rows x groups: nonzeros per row
    while len(groups) > 1:
        g = len(groups)
        merged = np.zeros((g, g), dtype=np.int64)
        for r0 in range(0, rows, 32):
            c = counts[r0 : r0 + 32]
            merged += np.maximum(c[:, :, None] + c[:, None, :] - 1, 0).sum(axis=0)
        sizes = np.array([len(x) for x in groups])
        joint = sizes[:, None] + sizes[None, :]
        ok = np.triu((joint <= alpha) & (merged <= budget), 1)
        if not ok.any():
            break
        key = np.where(ok, merged * (2 * alpha + 1) + joint, np.iinfo(np.int64).max)
        i, j = divmod(int(key.argmin()), g)
        groups[i] += groups.pop(j)
        counts[:, i] += counts[:, j]
        counts = np.delete(counts, j, axis=1)
    return [tuple(sorted(x)) for x in groups]


def pruned_gaussian(rows: int, cols: int, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    w[np.abs(w) < np.quantile(np.abs(w), SPARSITY)] = 0.0
    return w


def lstm_shapes(emsize: int, nhid: int) -> list[tuple[int, int]]:
    """[W_ih | W_hh] of each layer: 4H x (I + H)."""
    sizes = [(emsize, nhid), (nhid, nhid), (nhid, emsize)]
    return [(4 * h, i + h) for i, h in sizes]


def best_time(fn, repeat: int):
    """Best wall-clock time of ``repeat`` runs and the result (the CPU time is kept in CPU_S)."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    CPU_S[0] = min(cpus)
    return min(walls), result


CPU_S = [0.0]  # CPU seconds of the last best_time call: shows how much a busy machine inflated the wall time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="naive greedy only up to 800x240")
    ap.add_argument("--repeat", type=int, default=3, help="runs of ours per matrix (best is reported)")
    ap.add_argument("--naive-paper", action="store_true",
                    help="also time the naive greedy on the smallest paper matrix, 800x1200 (~16 min)")
    args = ap.parse_args(argv)
    print(f"column combining benchmark: alpha={ALPHA} gamma={GAMMA} sparsity={SPARSITY:.0%} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} numpy={np.__version__}")
    combine_columns(pruned_gaussian(64, 32, 0), ALPHA, GAMMA)  # warm up: first calls pay one-off costs
    failures = []
    never_more = []  # (label, ours, greedy)

    print("\n1. random matrices: ours vs the naive greedy merge")
    print(f"{'matrix':>10} | {'ours grp':>8} {'ours s (cpu)':>16} {'util':>5} | "
          f"{'greedy grp':>10} {'greedy s':>9} | {'speed-up':>9}")
    speedups = []
    for seed, (rows, cols) in enumerate(RANDOM_SHAPES):
        w = pruned_gaussian(rows, cols, seed)
        t_ours, p = best_time(lambda: combine_columns(w, ALPHA, GAMMA), args.repeat)
        cpu = CPU_S[0]
        if args.quick and rows * cols > 800 * 240:
            ref = greedy_combine_reference(w, ALPHA, GAMMA)
            base_groups, t_base, note = ref.groups_total, None, "(naive skipped: --quick)"
        else:
            t_base, groups = best_time(lambda: naive_greedy(w, ALPHA, GAMMA), 1)
            ref = greedy_combine_reference(w, ALPHA, GAMMA)
            if set(groups) != set(ref.blocks[0][2]):
                failures.append(f"{rows}x{cols}: greedy_combine_reference differs from the naive greedy")
            base_groups, note = len(groups), ""
        never_more.append((f"{rows}x{cols}", p.groups_total, base_groups))
        speed = f"{t_base / t_ours:8.0f}x" if t_base else f"{'-':>9}"
        if t_base:
            speedups.append((f"{rows}x{cols}", t_base / t_ours))
        base_s = f"{t_base:9.2f}" if t_base else f"{'-':>9}"
        print(f"{rows:>5}x{cols:<4} | {p.groups_total:>8} {t_ours:7.4f} ({cpu:6.4f}) {p.utilization:5.3f} | "
              f"{base_groups:>10} {base_s} | {speed} {note}")

    for row_block, title in (
        (None, "2. paper models, whole matrices (greedy groups: greedy_combine_reference)"),
        (16, "3. paper models, row_block=16, the default array height (greedy on the smallest only)"),
    ):
        print(f"\n{title}")
        print(f"{'model':>13} {'layer':>5} {'shape':>10} | {'groups':>7} {'cells':>9} {'util':>5} "
              f"{'ours s (cpu)':>15} | {'greedy grp':>10}")
        for model, (emsize, nhid) in MODELS.items():
            total = total_cpu = 0.0
            for layer, (rows, cols) in enumerate(lstm_shapes(emsize, nhid)):
                w = pruned_gaussian(rows, cols, 100 + layer)
                t, p = best_time(lambda: combine_columns(w, ALPHA, GAMMA, row_block), args.repeat)
                total += t
                total_cpu += CPU_S[0]
                greedy = ""
                # with row_block=16 the greedy merge takes ~0.6 s per block: only the smallest matrix
                if row_block is None or (rows * cols <= 800 * 1200 and not args.quick):
                    g = greedy_combine_reference(w, ALPHA, GAMMA, row_block).groups_total
                    never_more.append((f"{model} layer {layer} row_block={row_block}", p.groups_total, g))
                    greedy = f"{g:>10}"
                print(f"{model:>13} {layer:>5} {rows:>5}x{cols:<4} | {p.groups_total:>7} {p.packed_cells:>9} "
                      f"{p.utilization:5.3f} {t:7.3f} ({CPU_S[0]:5.3f}) | {greedy}")
                if args.naive_paper and row_block is None and rows * cols <= 800 * 1200:
                    t_base, groups = best_time(lambda: naive_greedy(w, ALPHA, GAMMA), 1)
                    never_more.append((f"{model} layer {layer} (naive)", p.groups_total, len(groups)))
                    speedups.append((f"{rows}x{cols}", t_base / t))
                    print(f"{'':>13} naive greedy: {len(groups)} groups in {t_base:.1f} s, {t_base / t:.0f}x slower")
            if row_block is None:
                ok = total < TARGETS[model]
                print(f"{model:>13} total {total:.3f} s, cpu {total_cpu:.3f} s (target < {TARGETS[model]:.0f} s): "
                      f"{'PASS' if ok else 'FAIL'}")
                if not ok:
                    failures.append(f"{model}: {total:.3f} s, target {TARGETS[model]} s")
            else:
                print(f"{model:>13} total {total:.3f} s, cpu {total_cpu:.3f} s")

    worse = [(label, a, b) for label, a, b in never_more if a > b]
    failures += [f"{label}: {a} groups, greedy {b}" for label, a, b in worse]
    print("\nsummary")
    print(f"  groups vs greedy merge: never more on {len(never_more) - len(worse)}/{len(never_more)} matrices; "
          f"total {sum(a for _, a, _ in never_more)} vs {sum(b for _, _, b in never_more)}")
    if speedups:
        print("  speed-up vs naive greedy: " + ", ".join(f"{label} {s:.0f}x" for label, s in speedups))
    print("  " + ("all targets met" if not failures else "FAILED: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
