"""Figures from training logs: the three questions a co-design engineer asks of a run.

How fast does BPC fall (and what did each prune/combine step cost)? Did the
nonzero count follow the schedule and never grow back? What BPC does each
array size buy? Each log.csv becomes one line per figure, labelled by its
run directory.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .outdir import check_out_dir  # noqa: E402


COLUMNS = ("kind", "epoch", "train_bpc", "valid_bpc", "nonzero_weights", "packed_cells")


class PlotError(ValueError):
    """A log that cannot be plotted; the message names the file and the fix."""


def _epochs(path: Path) -> dict[str, list[float]]:
    if path.is_dir():
        hint = f": {path / 'log.csv'}" if (path / "log.csv").is_file() else " (log.csv of a `ccflow train --out` folder)"
        raise PlotError(f"{path} is a folder; give the log file inside it{hint}")
    if not path.is_file():
        raise PlotError(f"{path} not found; give the log.csv written by `ccflow train`")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise PlotError(f"{path} lacks the column(s) {', '.join(missing)}; give a log.csv written by "
                                "`ccflow train`")
            rows = [r for r in reader if r["kind"] == "epoch"]
        return {c: [float(r[c]) if r[c] else float("nan") for r in rows] for c in COLUMNS[1:]}
    except (UnicodeDecodeError, ValueError, csv.Error) as e:
        if isinstance(e, PlotError):
            raise
        raise PlotError(f"{path} is not a ccflow training log ({type(e).__name__}); give a log.csv written by "
                        "`ccflow train`") from None


def plot_training(log_csv_paths, out_dir) -> list[Path]:
    """Write bpc_vs_epoch.png, nonzeros_vs_epoch.png, bpc_vs_packed_cells.png; return their paths."""
    runs = [(Path(p).parent.name or str(p), _epochs(Path(p))) for p in log_csv_paths]  # all read before writing
    out_dir = check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = {name: plt.subplots(figsize=(7, 4.5)) for name in ("bpc_vs_epoch", "nonzeros_vs_epoch",
                                                              "bpc_vs_packed_cells")}
    for label, r in runs:
        ax = figs["bpc_vs_epoch"][1]
        line, = ax.plot(r["epoch"], r["valid_bpc"], label=f"{label} valid")
        ax.plot(r["epoch"], r["train_bpc"], ls="--", color=line.get_color(), alpha=0.6, label=f"{label} train")
        figs["nonzeros_vs_epoch"][1].plot(r["epoch"], r["nonzero_weights"], marker=".", label=label)
        best: dict[float, float] = {}  # each array size once: the best valid BPC reached with it
        for cells, bpc in zip(r["packed_cells"], r["valid_bpc"]):
            if bpc == bpc:
                best[cells] = min(bpc, best.get(cells, bpc))
        xs = sorted(best)
        figs["bpc_vs_packed_cells"][1].plot(xs, [best[x] for x in xs], marker="o", ls=":", label=label)
    finite = [v for _, r in runs for v in r["valid_bpc"] + r["train_bpc"] if v == v]
    if finite:  # the first epochs would squash the part worth reading
        figs["bpc_vs_epoch"][1].set_ylim(min(finite) * 0.98, min(max(finite), 1.5 * min(finite)) * 1.02)
    labels = {"bpc_vs_epoch": ("epoch", "bits per character"),
              "nonzeros_vs_epoch": ("epoch", "nonzero LSTM weights"),
              "bpc_vs_packed_cells": ("packed array cells (LSTM matrices)", "best valid bits per character")}
    paths = []
    for name, (fig, ax) in figs.items():
        ax.set_xlabel(labels[name][0])
        ax.set_ylabel(labels[name][1])
        if name == "bpc_vs_packed_cells":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        tmp = out_dir / f".{name}.tmp{os.getpid()}.png"
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)  # an earlier figure stays whole until the new one is complete
        plt.close(fig)
        paths.append(path)
    return paths
