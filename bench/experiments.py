"""Column combining experiments: one training budget, eight ways to spend the array.

On ``ptbc-small`` with the ``small`` preset (3 x 256), each run trains for the
same number of epochs with the same schedule; only pruning and combining
differ. For every run: test BPC (float, the toolkit's protocol), nonzero LSTM
weights, packed array cells, utilization, and the fixed-point model on the
array (8-bit weights) with its test BPC and cycles per token.

    python bench/experiments.py                 # all runs, 2 at a time, then docs/results.md
    python bench/experiments.py --only cc,cpcc-1.0 --epochs 6   # a quick subset
    python bench/experiments.py --report        # rewrite docs/results.md from finished runs

Runs resume where they stopped (``ccflow train --resume``), so an interrupted
sweep continues. Figures are comparable only with each other (ptbc-small, not
PTB-char).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

SPARSITY = 0.8
PRUNE = [f"prune.sparsity={SPARSITY}", "prune.start_epoch=3", "prune.ramp_epochs=12"]


def combine(gamma: float, row_split: bool, rows: int = 32) -> list[str]:
    return ["combine.epochs=[16, 20]", f"combine.gamma={gamma}", f"combine.row_split={str(row_split).lower()}",
            f"array.rows={rows}"]


# name -> (family for the plot, label, overrides of the small preset)
RUNS = {
    "dense": ("dense", "dense", []),
    "prune": ("pruning only", f"magnitude pruning to {SPARSITY:.0%}", PRUNE),
    "cc": ("CC", "CC (gamma 0)", PRUNE + combine(0.0, False)),
    "cpcc-0.5": ("CPCC", "CPCC gamma 0.5", PRUNE + combine(0.5, False)),
    "cpcc-1.0": ("CPCC", "CPCC gamma 1.0", PRUNE + combine(1.0, False)),
    "cpcc-1.75": ("CPCC", "CPCC gamma 1.75", PRUNE + combine(1.75, False)),
    "rowblock-cc-32": ("row-block CC", "row-block CC, 32-row blocks", PRUNE + combine(0.0, True, 32)),
    "rowblock-cc-128": ("row-block CC", "row-block CC, 128-row blocks", PRUNE + combine(0.0, True, 128)),
}
BUDGET = ["train.when=[32, 37]"]
KEEP = "<!-- written by hand from here on; bench/experiments.py keeps it -->"


def train(name: str, out: Path, epochs: int, threads: int) -> None:
    _, _, overrides = RUNS[name]
    cmd = [sys.executable, "-m", "ccflow", "train", "--config", "small", "--out", str(out), "--resume",
           "--epochs", str(epochs)]
    for o in BUDGET + overrides:
        cmd += ["--set", o]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO / "python"))
    with open(out.parent / f"{out.name}.log", "a") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def measure(name: str, out: Path) -> dict:
    """Float and fixed-point test BPC, weights, cells, hardware figures of a finished run."""
    import numpy as np
    import torch

    from ccflow.checkpoint import load_model
    from ccflow.combine import combine_columns, lstm_matrix
    from ccflow.corpus import load_corpus
    from ccflow.evaluate import evaluate
    from ccflow.golden import fixed_point_bpc
    from ccflow.quantize import FloatModel, quantize

    trained = load_model(out / "model.pt")
    cfg = trained.config
    test = load_corpus(cfg.data.corpus, vocab=trained.vocab).test
    with torch.no_grad():
        float_bpc = evaluate(trained.model, test, cfg.train.test_batch_size, cfg.train.bptt)
    fm = FloatModel.from_torch(trained.model)
    nnz = dense = packed = 0
    for k, layer in enumerate(fm.layers):
        m = lstm_matrix(layer.w_ih, layer.w_hh)
        nnz += int(np.count_nonzero(m))
        dense += m.size
        p = (trained.packings or {}).get(k)
        # without combining, every nonzero column still takes a whole array column
        packed += (p or combine_columns(m, 1)).packed_cells
    design = quantize(fm, cfg.array, trained.packings)
    streams = 64
    fixed = fixed_point_bpc(design, test, streams)
    with torch.no_grad():
        float_streams = evaluate(trained.model, test, streams, cfg.train.bptt)
    return dict(name=name, family=RUNS[name][0], label=RUNS[name][1], overrides=BUDGET + RUNS[name][2],
                epochs=cfg.train.epochs, model_epoch=trained.epoch, valid_bpc=trained.valid_bpc,
                test_bpc=float_bpc, nnz=nnz, dense_cells=dense, packed_cells=packed, utilization=nnz / packed,
                hw_tiles=design.n_tiles, hw_ideal_cycles=design.ideal_cycles, hw_packed_cells=design.packed_cells,
                fixed_bpc=fixed, float_bpc_streams=float_streams, bpc_streams=streams,
                array=f"{cfg.array.rows}x{cfg.array.cols}, alpha {cfg.array.alpha}")


def plot(results: list[dict], runs_dir: Path, img: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ccflow.checkpoint import load_model
    from ccflow.combine import lstm_matrix

    img.mkdir(parents=True, exist_ok=True)
    colors = {"dense": "black", "pruning only": "tab:gray", "CC": "tab:blue", "CPCC": "tab:red",
              "row-block CC": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, color in colors.items():
        rs = sorted((r for r in results if r["family"] == family), key=lambda r: r["packed_cells"])
        if rs:
            ax.plot([r["packed_cells"] / 1e3 for r in rs], [r["test_bpc"] for r in rs], "o-", color=color,
                    label=family)
    # Runs that land on the same point (CC = pruning only, CPCC 1.0 ~ 1.75) share one label.
    labels: dict[tuple[float, float], list[str]] = {}
    for r in results:
        labels.setdefault((round(r["packed_cells"] / 1e3, -1), round(r["test_bpc"], 2)), []).append(r["name"])
    for (x, y), names in labels.items():
        ax.annotate(", ".join(names), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points",
                    ha="right" if x > 1200 else "left")
    ax.set_xlabel("packed array cells of the LSTM matrices (thousands)")
    ax.set_ylabel("test BPC (ptbc-small)")
    ax.set_title("Same budget: test BPC against array cells")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tradeoff = img / "bpc_vs_packed_cells.png"
    fig.savefig(tradeoff, dpi=120)
    plt.close(fig)

    # One packed LSTM matrix: the original sparse layout next to its column-combined packing.
    pick = next((r for r in results if r["name"] == "cpcc-1.0"), None) or next(
        (r for r in results if r["family"] == "CPCC"), None)
    if pick is None:
        return [tradeoff]
    trained = load_model(runs_dir / pick["name"] / "model.pt")
    layer = trained.model.layers[1]
    w_ih, w_hh = (w.detach().numpy() for w in layer.effective_weights())
    m = lstm_matrix(w_ih, w_hh)
    p = trained.packings[1]
    rows = 128
    packed = np.zeros((rows, p.groups_total))
    start, stop, groups = p.blocks[0]
    for g, cols in enumerate(groups):
        packed[:, g] = np.abs(m[:rows, list(cols)]).max(axis=1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6),
                             gridspec_kw={"width_ratios": [m.shape[1], max(p.groups_total, m.shape[1] // 5)]})
    vmax = np.abs(m).max()
    axes[0].imshow(np.abs(m[:rows]), aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
    axes[0].set_title(f"layer 1 [W_ih | W_hh], first {rows} rows: {m.shape[1]} columns, "
                      f"{np.count_nonzero(m[:rows]) / m[:rows].size:.0%} nonzero", fontsize=9)
    axes[1].imshow(packed, aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
    axes[1].set_title(f"packed,\n{pick['label']}:\n{p.groups_total} groups,\n"
                      f"{np.count_nonzero(packed) / packed.size:.0%} of cells used", fontsize=8)
    axes[0].set_xlabel("matrix column (x, then h)")
    axes[1].set_xlabel("array column (one group)")
    for a in axes:
        a.set_ylabel("row (unit-major gates)")
    fig.tight_layout()
    heatmap = img / "packed_matrix_heatmap.png"
    fig.savefig(heatmap, dpi=120)
    plt.close(fig)
    return [tradeoff, heatmap]


def report(results: list[dict], epochs: int, doc: Path, images: list[Path]) -> None:
    dense = next((r for r in results if r["name"] == "dense"), None)
    lines = [
        "# Column combining experiments (`make experiments`)",
        "",
        "Same budget for every run: the `small` preset (3 x 256 LSTM, tied 256-wide embedding) on",
        f"`ptbc-small`, {epochs} epochs, lr divided by 10 after epochs 32 and 37. Pruned runs ramp",
        f"magnitude pruning to {SPARSITY:.0%} of every LSTM matrix over epochs 3 to 14; combining runs",
        "combine after epochs 16 and 20 (alpha 8) and fine-tune with the masks fixed until the end.",
        "`model.pt` is the best valid epoch once the masks are final.",
        "",
        "ptbc-small trains on 90% of PTB-char's *validation* text (354k characters): these BPC are",
        "comparable with each other only, not with published PTB-char results.",
        "",
        "Produced by `python bench/experiments.py` (CPU, 2 runs at a time, 1 thread each).",
        "",
        "| run | test BPC (float) | fixed-point BPC | nonzero weights | packed cells | dense / packed cells | utilization | array | cycles/token (ideal) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['test_bpc']:.4f} | {r['fixed_bpc']:.4f} (float {r['float_bpc_streams']:.4f}) "
            f"| {r['nnz']:,} | {r['packed_cells']:,} | {r['dense_cells'] / r['packed_cells']:.2f}x "
            f"| {r['utilization']:.1%} | {r['array']} | {r['hw_ideal_cycles']:.0f} |")
    lines += [
        "",
        "- *test BPC (float)*: `ccflow eval` protocol, one stream over the whole test split.",
        "- *fixed-point BPC*: the 8-bit integer golden model on the array (the hardware's numbers), scored on",
        "  64 parallel streams of the test split; the float model on the same 64 streams in brackets.",
        "- *packed cells*: rows x column groups, summed over the three LSTM matrices; without combining,",
        "  every nonzero column takes a whole array column. *utilization* = nonzero weights / packed cells.",
        "- *cycles/token (ideal)*: packed cells of all four matrices (decoder included) / array cells, for the",
        "  layout the hardware gets. A run without packings of its own (dense, pruning only) is laid out with",
        "  conflict-free combining in blocks of the array height, which loses nothing; so pruning only runs as",
        "  fast as row-block CC at 32 rows, and whole-matrix CC is slower than that default. The 128-row run",
        "  has a 128 x 16 array (4x the cells of the others).",
        "",
    ]
    if dense:
        lines.append(f"Dense baseline: {dense['test_bpc']:.4f} test BPC on {dense['dense_cells']:,} cells.")
        lines.append("")
    for img in images:
        lines.append(f"![{img.stem}](img/{img.name})")
        lines.append("")
    # The reading of the figures is written by hand below the marker and survives a rewrite.
    kept = doc.read_text().split(KEEP, 1)[1] if doc.is_file() and KEEP in doc.read_text() else "\n"
    doc.write_text("\n".join(lines) + "\n" + KEEP + kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (1 thread each)")
    ap.add_argument("--only", help="comma-separated run names: " + ", ".join(RUNS))
    ap.add_argument("--out", default=str(REPO / "build" / "experiments"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "results.md"))
    ap.add_argument("--report", action="store_true", help="only measure finished runs and rewrite the report")
    ap.add_argument("--from-json", action="store_true",
                    help="with --report: reuse OUT/results.json instead of measuring again (rewrites text and plots)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = set(names) - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown run(s) {sorted(unknown)}; known: {', '.join(RUNS)}")
    runs_dir = Path(args.out)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        threads = max(1, (os.cpu_count() or 2) // args.jobs)
        t0 = time.time()
        with ThreadPoolExecutor(args.jobs) as pool:
            for name, _ in zip(names, pool.map(lambda n: train(n, runs_dir / n, args.epochs, threads), names)):
                print(f"trained {name} ({time.time() - t0:.0f} s so far)", flush=True)
    results = []
    if args.report and args.from_json:
        results = [r for r in json.loads((runs_dir / "results.json").read_text()) if r["name"] in names]
        names = []
    for name in names:
        if (runs_dir / name / "model.pt").is_file():
            results.append(measure(name, runs_dir / name))
            print(json.dumps(results[-1]), flush=True)
    (runs_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    doc = Path(args.doc)
    images = plot(results, runs_dir, doc.parent / "img")
    report(results, args.epochs, doc, images)
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
