"""Column combining on CNNs, in the paper's shape: dense, combining only, combining with pruning.

For each network (LeNet-5 and vgg-small, ``ccflow.cnn``) on an image set (the built-in digits by
default; ``--data`` an MNIST or CIFAR-10 binary folder), three runs of the paper's recipe
(``configs/lenet5-paper.toml``: 10 pruning steps over the first half on a cubic ramp, column
combining after each, sparsity scaled by 1 - 1/alpha, L1 until the last step) and one of ours:

* ``dense``: no pruning, no combining (alpha 1 in the paper: every weight its own cell);
* ``cc``: the recipe with gamma 0 (conflict-free combining, the paper's "combining only");
* ``cpcc``: the recipe with gamma 0.5 (combine-pruning keeps the largest weight per row and group);
* ``cpcc-once``: the same ramp, but one combine (gamma 0.5) at its end instead of ten: each
  combine-pruning cuts without retraining, and ten of them compound.

Each record: float and fixed-point test accuracy (the integer golden model ``ccflow.cnn_quantize``,
what the hardware computes), packed cells and tiles against dense, utilization, the command.

    python bench/cnn_experiments.py                      # both networks on digits -> docs/cnn_results.md
    python bench/cnn_experiments.py --arch lenet5 --data ~/mnist --epochs 20 --out build/cnn-mnist
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

RUNS = {
    "dense": ("prune.sparsity=0", "combine.epochs=[]", "prune.l1=0"),
    "cc": ("combine.gamma=0",),
    "cpcc": ("combine.gamma=0.5",),
    "cpcc-once": ("combine.gamma=0.5", "combine.epochs=[14]"),
}
PAPER = {"lenet5": "LeNet-5 on MNIST: 98.5 / 98.5 / 97.61% at 1 / 0.935 / 0.387 of the dense tiles",
         "vgg-small": "(the paper's CIFAR-10 net is ResNet-20: 93.96 / 93.96 / 93.10% at 1 / 0.90 / 0.266)"}


def run(arch: str, name: str, data: str | None, epochs: int | None, out: Path) -> dict:
    import torch

    from ccflow.checkpoint import load_model
    from ccflow.cnn import FloatCnn
    from ccflow.cnn_quantize import fixed_point_accuracy, quantize_cnn
    from ccflow.cnn_train import evaluate_images
    from ccflow.config import load_config
    from ccflow.images import load_images
    from ccflow.train import run_training

    sets = [f"model.arch={arch}", *RUNS[name]] + ([f"data.corpus={data}"] if data else []) \
        + ([f"train.epochs={epochs}"] if epochs else [])
    cfg = load_config("lenet5-paper", sets)
    folder = out / f"{arch}-{name}"
    t0 = time.process_time()
    run_training(cfg, folder, resume=True, threads=1)
    trained = load_model(folder / "model.pt")
    images = load_images(cfg.data.corpus)
    with torch.no_grad():
        _, acc = evaluate_images(trained.model, images.test_x, images.test_y)
    design = quantize_cnn(FloatCnn.from_torch(trained.model), cfg.array, trained.packings)
    fixed = fixed_point_accuracy(design, images.test_x, images.test_y)
    command = "python -m ccflow train --config lenet5-paper --threads 1 " + " ".join(f"--set {s}" for s in sets)
    return dict(name=f"{arch}-{name}", arch=arch, run=name, data=images.name, test_accuracy=round(acc, 5),
                fixed_point_accuracy=round(fixed, 5), packed_cells=design.packed_cells,
                dense_cells=design.dense_cells, nonzero_weights=design.nnz, tiles=design.n_tiles,
                utilization=round(design.nnz / design.packed_cells, 4), epochs=cfg.train.epochs,
                cpu_s=round(time.process_time() - t0, 1), command=shlex.join(command.split()))


def report(records: list[dict], doc: Path) -> None:
    lines = ["# Column combining on CNNs (`python bench/cnn_experiments.py`)", "",
             "The paper's shape: for each network, dense, combining only (alpha 8, gamma 0) and combining with",
             "pruning (alpha 8, gamma 0.5), on a 16 x 8 array of 8-input MX cells; plus `cpcc-once`, one combine at",
             "the end of the ramp instead of ten. *Tiles* are the array loads of 16 x 8 cells per image (each stays",
             "while every output position streams through); *of dense* compares them with the dense run's.",
             "*Fixed point*: the integer golden model (8-bit weights, Q7.8 activations) that the hardware computes.",
             f"Records with commands: [{doc.with_suffix('.json').name}]({doc.with_suffix('.json').name}).", "",
             "With the data sets at hand (not here: no download on this machine), the same table for MNIST and",
             "CIFAR-10 (binary distribution):", "",
             "    python bench/cnn_experiments.py --arch lenet5 --data ~/mnist --json docs/cnn_mnist.json --doc docs/cnn_mnist.md",
             "    python bench/cnn_experiments.py --arch vgg-small --data ~/cifar-10-batches-bin --json docs/cnn_cifar.json \\",
             "        --doc docs/cnn_cifar.md", ""]
    for arch in dict.fromkeys(r["arch"] for r in records):
        rs = [r for r in records if r["arch"] == arch]
        dense = next((r for r in rs if r["run"] == "dense"), None)
        lines += [f"## {arch} on {rs[0]['data']}, {rs[0]['epochs']} epochs", "",
                  f"Paper: {PAPER.get(arch, '')}", "",
                  "| run | test accuracy | fixed point | packed cells | tiles | of dense tiles | utilization | CPU s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rs:
            rel = f"{r['tiles'] / dense['tiles']:.3f}" if dense else ""
            lines.append(f"| {r['run']} | {r['test_accuracy']:.2%} | {r['fixed_point_accuracy']:.2%} | "
                         f"{r['packed_cells']:,} of {r['dense_cells']:,} | {r['tiles']} | {rel} | "
                         f"{r['utilization']:.1%} | {r['cpu_s']:.0f} |")
        lines.append("")
    doc.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="lenet5,vgg-small")
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--data", help="MNIST or CIFAR-10 binary folder (default: the built-in digits)")
    ap.add_argument("--epochs", type=int, help="override train.epochs (default: the preset's 30)")
    ap.add_argument("--out", default=str(REPO / "build" / "cnn-experiments"), help="run folders")
    ap.add_argument("--json", default=str(REPO / "docs" / "cnn_results.json"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "cnn_results.md"))
    ap.add_argument("--report", action="store_true", help="only rewrite --doc from --json")
    args = ap.parse_args()
    store = Path(args.json)
    records = {r["name"]: r for r in json.loads(store.read_text())} if store.is_file() else {}
    for arch in ([] if args.report else args.arch.split(",")):
        for name in args.runs.split(","):
            r = run(arch, name, args.data, args.epochs, Path(args.out))
            print(json.dumps(r), flush=True)
            records[r["name"]] = r
            store.write_text(json.dumps(list(records.values()), indent=1) + "\n")
    report(list(records.values()), Path(args.doc))
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
