"""The BPC-versus-array-cells frontier: every way to spend the array, one training budget.

On ``ptbc-small`` with the ``small`` preset (3 x 256 LSTM), every run trains for the same
epochs with the same learning-rate schedule; runs differ in width, dropout, pruning,
combining and training method. For each finished run, ``measure`` records test BPC (float,
the toolkit's protocol), the 8-bit fixed-point BPC of the design ``ccflow rtl`` would build,
and the packing stage's figures (``ccflow.pack``: packed cells = cells the array executes per
token, decoder included). Records are merged by name into ``docs/results.json``; the table
and the plot in ``docs/results.md`` are made from all of them, so a sweep can be run in parts.

    python bench/experiments.py --list                     # the runs, by family
    python bench/experiments.py --only dense-128,prune-0.8 # train (2 at a time, 1 thread each) + record
    python bench/experiments.py --report                   # table and plot from docs/results.json

Runs resume where they stopped (``ccflow train --resume``). Figures are comparable only with
each other (ptbc-small trains on 90% of PTB-char's validation text).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

EPOCHS = 40
BUDGET = ["train.when=[32, 37]"]
KEEP = "<!-- written by hand from here on; bench/experiments.py keeps it -->"


@dataclass(frozen=True)
class Run:
    family: str
    label: str
    overrides: tuple[str, ...]
    teacher: str | None = None  # a run whose model.pt this one distills from
    model_of: str | None = None  # another run's model, counted on other hardware: nothing to train

    @property
    def needs(self) -> str | None:
        """The run that must be trained first."""
        return self.model_of or self.teacher


def dense(width: int, drop: float) -> tuple[str, ...]:
    """A dense 3 x width model, the small preset's dropouts scaled by ``drop``."""
    return (f"model.emsize={width}", f"model.nhid={width}", f"model.dropout={0.1 * drop:g}",
            f"model.dropouth={0.25 * drop:g}", f"model.dropouti={0.1 * drop:g}", f"model.wdrop={0.5 * drop:g}")


def prune(sparsity: float, *extra: str) -> tuple[str, ...]:
    """Linear ramp over epochs 3-14, the schedule of the earlier sweep."""
    return (f"prune.sparsity={sparsity}", "prune.start_epoch=3", "prune.ramp_epochs=12", *extra)


def combine(gamma: float, row_split: bool, epochs: str = "[16, 20]") -> tuple[str, ...]:
    return (f"combine.epochs={epochs}", f"combine.gamma={gamma}", f"combine.row_split={str(row_split).lower()}")


PAPER = ("prune.sparsity=0.9", "prune.alpha_scaled=true", "prune.start_epoch=1", "prune.ramp_epochs=20",
         "prune.steps=10", "prune.schedule=cubic", "prune.l1=1e-6",
         "combine.epochs=[2, 4, 6, 8, 10, 12, 14, 16, 18, 20]", "combine.gamma=0.5", "combine.row_split=false")

RUNS: dict[str, Run] = {}
for w in (256, 192, 128, 96, 64):
    for d in (1.0, 0.5, 0.25):
        RUNS[f"dense-{w}-d{d:g}"] = Run("dense", f"dense 3 x {w}, dropout x{d:g}", dense(w, d))
# The first sweep kept the preset's dropout; these runs are recorded and stay listed.
RUNS["prune-0.8"] = Run("pruning only", "magnitude pruning to 80%", prune(0.8))
RUNS["bbs-0.8"] = Run("bank-balanced", "bank-balanced 80%, banks of 32",
                      prune(0.8, "prune.method=bank_balanced", "prune.bank_size=32"))
RUNS["rbcc"] = Run("row-block CC", "80%, CC in 32-row blocks", prune(0.8) + combine(0.0, True))
for g in (0.25, 0.5):
    RUNS[f"cpcc-{g:g}"] = Run("CPCC, whole matrices", f"80%, CPCC gamma {g:g}, whole", prune(0.8) + combine(g, False))
RUNS["paper"] = Run("paper recipe", "paper: 10 cubic steps + combine each, 90% x (1 - 1/8), L1", PAPER)
# Methods (issue: combine-aware pruning, distillation, cubic ramp with recovery, iterative, wider)
RUNS["cubic-cpcc-0.5"] = Run("methods", "cubic ramp 2-21 in 10 steps, CPCC 0.5 whole at 22, 24",
                             ("prune.sparsity=0.8", "prune.start_epoch=2", "prune.ramp_epochs=20", "prune.steps=10",
                              "prune.schedule=cubic") + combine(0.5, False, "[22, 24]"))
RUNS["kd-cpcc-0.5"] = Run("methods", "distilled from dense 3 x 256, CPCC 0.5 whole",
                          prune(0.8) + combine(0.5, False) + ("train.distill_weight=0.5", "train.distill_temp=2.0"),
                          teacher="dense-256-d1")
# Pruning regularises: the pruned 3 x 256 models want less dropout, as narrow dense ones do (d0.5 and d0.25
# beat the preset's dropout on every run tried). So the remaining points train at a quarter of it, and the
# bank-balanced peer gets the same chance.
for d in (0.5, 0.25):
    for g in (0.25, 0.5):
        RUNS[f"d{d:g}-cpcc-{g:g}"] = Run("methods", f"80%, CPCC gamma {g:g} whole, dropout x{d:g}",
                                         dense(256, d) + prune(0.8) + combine(g, False))
    RUNS[f"d{d:g}-bbs-0.8"] = Run("bank-balanced", f"bank-balanced 80%, banks of 32, dropout x{d:g}",
                                  dense(256, d) + prune(0.8, "prune.method=bank_balanced", "prune.bank_size=32"))
LOW = dense(256, 0.25)
RUNS["d0.25-bbs-0.9"] = Run("bank-balanced", "bank-balanced 90%, banks of 32, dropout x0.25",
                            LOW + prune(0.9, "prune.method=bank_balanced", "prune.bank_size=32"))
# Bank-balanced pruning is also a way to prune for ccflow's array: the same models, counted as the MX
# array executes them (lossless row-block CC, no combine-pruning), are ccflow points.
for src in ("d0.5-bbs-0.8", "d0.25-bbs-0.9"):
    RUNS[f"{src}-mx"] = Run("methods", RUNS[src].label + ", on the MX array (row-block CC)", RUNS[src].overrides,
                            model_of=src)
for s in (0.6, 0.8, 0.9):
    RUNS[f"d0.25-prune-{s:g}"] = Run("pruning only", f"magnitude pruning to {s:.0%}, dropout x0.25", LOW + prune(s))
RUNS["d0.25-cpcc-0.1"] = Run("CPCC, whole matrices", "80%, CPCC gamma 0.1, whole, dropout x0.25",
                             LOW + prune(0.8) + combine(0.1, False))
for g in (0.1, 0.25, 0.5, 1.0):
    RUNS[f"d0.25-cpcc-rb-{g:g}"] = Run("CPCC, row blocks", f"80%, CPCC gamma {g:g}, 32-row blocks, dropout x0.25",
                                       LOW + prune(0.8) + combine(g, True))
RUNS["d0.25-s0.83-cpcc-rb-0.5"] = Run("CPCC, row blocks", "83%, CPCC gamma 0.5, 32-row blocks, dropout x0.25",
                                      LOW + prune(0.83) + combine(0.5, True))
# A group holds at most alpha columns, so a row block needs at least 1/alpha of the cells of its columns that
# keep a weight (198,208 cells for 3 x 256 at alpha 8 when none is empty). Gamma 1 packed only 3% tighter than
# gamma 0.5 (203,104 against 208,544 cells), 83% sparsity as little: 16-input cells lower the bound to 1/16.
RUNS["d0.25-a16-cpcc-rb-0.5"] = Run("CPCC, row blocks", "80%, CPCC gamma 0.5, 32-row blocks, 16-input cells, dropout x0.25",
                                    LOW + prune(0.8) + combine(0.5, True) + ("array.alpha=16",))
RUNS["d0.25-s0.83-cpcc-0.5"] = Run("methods", "83%, CPCC gamma 0.5 whole, dropout x0.25",
                                   LOW + prune(0.83) + combine(0.5, False))
RUNS["d0.25-iter-cpcc-0.5"] = Run("methods", "iterative: 4 prune steps, combine after each, CPCC 0.5 whole, dropout x0.25",
                                  LOW + prune(0.8, "prune.steps=4") + combine(0.5, False, "[5, 8, 11, 14, 16, 20]"))
RUNS["d0.25-soft-cpcc-0.5"] = Run("methods", "combine-aware: 2 soft epochs before each combine, CPCC 0.5 whole, "
                                  "dropout x0.25", LOW + prune(0.8) + combine(0.5, False) + ("combine.soft_epochs=2",))
# Row blocks beat whole matrices at every gamma measured, so the wider model is combined in row blocks.
RUNS["d0.25-wide-384-cpcc-rb-0.5"] = Run("methods", "3 x 384 pruned to 90%, CPCC 0.5 in 32-row blocks, dropout x0.25",
                                         dense(384, 0.25) + prune(0.9) + combine(0.5, True))
# At alpha 8 the wider model is bounded the same way (421,824 cells, under an eighth of its dense 3,558,144 only
# because 21% of its block-columns are empty); 16-input cells lower the bound.
RUNS["d0.25-wide-384-a16-cpcc-rb-0.5"] = Run("methods", "3 x 384 pruned to 90%, CPCC 0.5 in 32-row blocks, 16-input cells, "
                                             "dropout x0.25", RUNS["d0.25-wide-384-cpcc-rb-0.5"].overrides
                                             + ("array.alpha=16",))

# Gentler combining of the wider model: the trend toward the 4x target pointed at 3 x 384 at a lower gamma.
RUNS["d0.25-wide-384-cpcc-rb-0.25"] = Run("methods", "3 x 384 pruned to 90%, CPCC 0.25 in 32-row blocks, dropout x0.25",
                                          dense(384, 0.25) + prune(0.9) + combine(0.25, True))
# Both gammas of 3 x 384 pack to the alpha-8 bound of its non-empty block-columns (3.75x): to pass 4x, prune it
# harder so more block-columns empty, or widen it further and lower the bound with 16-input cells.
RUNS["d0.25-wide-384-s0.93-cpcc-rb-0.25"] = Run("methods", "3 x 384 pruned to 93%, CPCC 0.25 in 32-row blocks, "
                                                "dropout x0.25", dense(384, 0.25) + prune(0.93) + combine(0.25, True))
RUNS["d0.25-wide-448-a16-cpcc-rb-0.5"] = Run("methods", "3 x 448 pruned to 90%, CPCC 0.5 in 32-row blocks, 16-input "
                                             "cells, dropout x0.25", dense(448, 0.25) + prune(0.9) + combine(0.5, True)
                                             + ("array.alpha=16",))
# 3 x 448 on 16-input cells packs to 5.16x: a 3 x 512 at the same sparsity would sit just past a quarter of the dense
# 3 x 256 cells (its LSTM layers pack to about a 17th, its dense 50 x 512 decoder adds 25,600), so it is pruned to 92%.
RUNS["d0.25-wide-512-s0.92-a16-cpcc-rb-0.5"] = Run("methods", "3 x 512 pruned to 92%, CPCC 0.5 in 32-row blocks, "
                                                   "16-input cells, dropout x0.25", dense(512, 0.25) + prune(0.92)
                                                   + combine(0.5, True) + ("array.alpha=16",))
# 3 x 448 at a quarter of the dropout overfits while the pruning ramp is gentle (epoch 12: 1.48 train, 1.85 valid
# BPC) and 3 x 512 at 92% gains only 0.0006 on it: the same 3 x 448 with half the dropout.
RUNS["d0.5-wide-448-a16-cpcc-rb-0.5"] = Run("methods", "3 x 448 pruned to 90%, CPCC 0.5 in 32-row blocks, 16-input "
                                            "cells, dropout x0.5", dense(448, 0.5) + prune(0.9) + combine(0.5, True)
                                            + ("array.alpha=16",))
# The 4x target allows 396,288 cells and 3 x 448 at gamma 0.5 uses 307,104: the same model combined more gently.
RUNS["d0.25-wide-448-a16-cpcc-rb-0.25"] = Run("methods", "3 x 448 pruned to 90%, CPCC 0.25 in 32-row blocks, 16-input "
                                              "cells, dropout x0.25", dense(448, 0.25) + prune(0.9) + combine(0.25, True)
                                              + ("array.alpha=16",))
# Pruned this hard, 3 x 448 underfits after the ramp (d0.5: 1.771 train, 1.797 valid BPC at epoch 40) and a
# quarter of the dropout beat half of it by 0.026: an eighth on the best 4x recipe.
RUNS["d0.125-wide-448-a16-cpcc-rb-0.25"] = Run("methods", "3 x 448 pruned to 90%, CPCC 0.25 in 32-row blocks, 16-input "
                                               "cells, dropout x0.125", dense(448, 0.125) + prune(0.9)
                                               + combine(0.25, True) + ("array.alpha=16",))
# On 16-input cells CPCC 0.5 packs a pruned 3 x W to about a 16th of its dense cells, so the width sets the
# cells: 3 x 384 sits at 7.18x, 3 x 352 at about 8.3x, 3 x 320 at about 10x (bank-balanced 90%: 9.89x, 1.9183 test BPC).
RUNS["d0.25-wide-352-a16-cpcc-rb-0.5"] = Run("methods", "3 x 352 pruned to 90%, CPCC 0.5 in 32-row blocks, 16-input "
                                             "cells, dropout x0.25", dense(352, 0.25) + prune(0.9) + combine(0.5, True)
                                             + ("array.alpha=16",))
RUNS["d0.25-wide-320-a16-cpcc-rb-0.5"] = Run("methods", "3 x 320 pruned to 90%, CPCC 0.5 in 32-row blocks, 16-input "
                                             "cells, dropout x0.25", dense(320, 0.25) + prune(0.9) + combine(0.5, True)
                                             + ("array.alpha=16",))
# After its last combine (epoch 20) small-wide's model trains at about its validation BPC (epoch 40: 1.843 train
# with dropout, 1.853 valid): it underfits, so its dropout only serves while the masks still change.
RUNS["d0.25-final0-wide-320-a16-cpcc-rb-0.5"] = Run("methods", "3 x 320 pruned to 90%, CPCC 0.5 in 32-row blocks, "
                                                    "16-input cells, dropout x0.25 until the masks are final, then none",
                                                    RUNS["d0.25-wide-320-a16-cpcc-rb-0.5"].overrides
                                                    + ("train.final_dropout=0",))
RUNS["d0.25-final0-wide-448-a16-cpcc-rb-0.25"] = Run("methods", "3 x 448 pruned to 90%, CPCC 0.25 in 32-row blocks, "
                                                     "16-input cells, dropout x0.25 until the masks are final, then none",
                                                     RUNS["d0.25-wide-448-a16-cpcc-rb-0.25"].overrides
                                                     + ("train.final_dropout=0",))
RUNS["d0.25-final0-wide-352-a16-cpcc-rb-0.5"] = Run("methods", "3 x 352 pruned to 90%, CPCC 0.5 in 32-row blocks, "
                                                    "16-input cells, dropout x0.25 until the masks are final, then none",
                                                    RUNS["d0.25-wide-352-a16-cpcc-rb-0.5"].overrides
                                                    + ("train.final_dropout=0",))
# With no dropout after its last combine 3 x 448 at gamma 0.25 overfits (1.7867 against 1.7506 with it kept):
# half of its quarter once the masks are final.
RUNS["d0.25-final0.5-wide-448-a16-cpcc-rb-0.25"] = Run("methods", "3 x 448 pruned to 90%, CPCC 0.25 in 32-row "
                                                       "blocks, 16-input cells, dropout x0.25 until the masks are "
                                                       "final, then x0.125",
                                                       RUNS["d0.25-wide-448-a16-cpcc-rb-0.25"].overrides
                                                       + ("train.final_dropout=0.5",))
# The same nonzeros per matrix as 3 x 352 at 90% (the best 8x point, 1.8064) spread over a wider model.
RUNS["d0.25-final0-wide-384-s0.915-a16-cpcc-rb-0.5"] = Run("methods", "3 x 384 pruned to 91.5%, CPCC 0.5 in 32-row "
                                                           "blocks, 16-input cells, dropout x0.25 until the masks "
                                                           "are final, then none", dense(384, 0.25) + prune(0.915)
                                                           + combine(0.5, True)
                                                           + ("array.alpha=16", "train.final_dropout=0"))
# Every matrix so far was pruned to the same sparsity: one magnitude threshold over the three LSTM matrices
# (prune.scope=global) lets each layer keep as many weights as their magnitudes against the others' earn, on
# the best 4x and 8x recipes. (About neutral: 0.002 BPC better on the first, 0.004 worse on the second.)
RUNS["d0.25-global-wide-448-a16-cpcc-rb-0.25"] = Run("methods", "3 x 448 pruned to 90% by one threshold over its "
                                                     "matrices, CPCC 0.25 in 32-row blocks, 16-input cells, "
                                                     "dropout x0.25", RUNS["d0.25-wide-448-a16-cpcc-rb-0.25"].overrides
                                                     + ("prune.scope=global",))
RUNS["d0.25-final0-global-wide-352-a16-cpcc-rb-0.5"] = Run("methods", "3 x 352 pruned to 90% by one threshold over "
                                                           "its matrices, CPCC 0.5 in 32-row blocks, 16-input cells, "
                                                           "dropout x0.25 until the masks are final, then none",
                                                           RUNS["d0.25-final0-wide-352-a16-cpcc-rb-0.5"].overrides
                                                           + ("prune.scope=global",))
# Gamma 0.25 packs 3 x 448 about 19% looser than gamma 0.5 and gained 0.014 there: 3 x 320 at gamma 0.25 should
# sit at about the cells of 3 x 352 at gamma 0.5 (the 8x point), 3 x 288 at those of 3 x 320 (small-wide), with
# fewer, better-kept weights. (Both better than the wider gamma 0.5 model at about its cells.)
for w in (320, 288):
    RUNS[f"d0.25-final0-wide-{w}-a16-cpcc-rb-0.25"] = Run("methods", f"3 x {w} pruned to 90%, CPCC 0.25 in 32-row "
                                                          "blocks, 16-input cells, dropout x0.25 until the masks are "
                                                          "final, then none", dense(w, 0.25) + prune(0.9)
                                                          + combine(0.25, True)
                                                          + ("array.alpha=16", "train.final_dropout=0"))
# Both times gentler combining of a narrower model beat gamma 0.5 on a wider one at about its cells: the 4x point
# (3 x 448 at gamma 0.25, 365,024 cells) the same way, 3 x 416 combined at gamma 0.1 (the dropout kept: 3 x 448
# overfits without it once final). Gamma 0.1 fills 70% of the cells (0.25: 89%): 482,880 cells, past the 4x
# budget, for 0.001 BPC.
RUNS["d0.25-wide-416-a16-cpcc-rb-0.1"] = Run("methods", "3 x 416 pruned to 90%, CPCC 0.1 in 32-row blocks, 16-input "
                                             "cells, dropout x0.25", dense(416, 0.25) + prune(0.9) + combine(0.1, True)
                                             + ("array.alpha=16",))
# Every run so far trained from one seed (train.seed = 1111), and the frontier's comparisons come down to 0.002-0.008
# BPC: the preset's run from another seed measures how far one run's BPC moves with its initialisation and data order
# (0.006 test, 0.007 validation: differences below about 0.01 are ties).
RUNS["d0.25-final0-wide-288-a16-cpcc-rb-0.25-seed2"] = Run("methods", "3 x 288 pruned to 90%, CPCC 0.25 in 32-row "
                                                           "blocks, 16-input cells, dropout x0.25 until the masks are "
                                                           "final, then none; seed 2",
                                                           RUNS["d0.25-final0-wide-288-a16-cpcc-rb-0.25"].overrides
                                                           + ("train.seed=2",))
RUNS["d0.25-final0-cpcc-rb-0.5"] = Run("methods", "80%, CPCC gamma 0.5, 32-row blocks, dropout x0.25 until the "
                                      "masks are final, then none", RUNS["d0.25-cpcc-rb-0.5"].overrides
                                      + ("train.final_dropout=0",))
# kd-cpcc-0.5 distilled a student with the preset's full dropout, which already underfits; this one distills the
# recommended recipe (a quarter of the dropout) from dense 3 x 192 at half dropout (1.7679 test BPC, 0.13 ahead of
# the undistilled student).
RUNS["d0.25-kd-cpcc-rb-0.5"] = Run("methods", "distilled from dense 3 x 192 (dropout x0.5), 80%, CPCC 0.5 in 32-row "
                                   "blocks, dropout x0.25", RUNS["d0.25-cpcc-rb-0.5"].overrides
                                   + ("train.distill_weight=0.5", "train.distill_temp=2.0"), teacher="dense-192-d0.5")
# At T = 2 the teacher's softened targets put 29% of their mass beyond its top 5 characters (12% at T = 1), so
# the student spends its capacity on the tail that BPC never reads: the same run at T = 1.
RUNS["d0.25-kd-t1-cpcc-rb-0.5"] = Run("methods", "distilled at T = 1 from dense 3 x 192 (dropout x0.5), 80%, CPCC 0.5 in "
                                      "32-row blocks, dropout x0.25", RUNS["d0.25-cpcc-rb-0.5"].overrides
                                      + ("train.distill_weight=0.5", "train.distill_temp=1.0"), teacher="dense-192-d0.5")

# The presets that are a run's settings (tests/test_experiments.py holds them equal): the recipe on 3 x 256 and
# the same on 3 x 288 with 16-input cells at gamma 0.25 (better on both axes; both fit the LFE5U-85F on a 16 x 2
# array).
PRESETS = {"small-cpcc": "d0.25-final0-cpcc-rb-0.5", "small-wide": "d0.25-final0-wide-288-a16-cpcc-rb-0.25"}

FAMILY_COLORS = {"dense": "black", "pruning only": "tab:gray", "bank-balanced": "tab:brown", "row-block CC": "tab:green",
                 "CPCC, row blocks": "tab:olive", "CPCC, whole matrices": "tab:red", "paper recipe": "tab:purple",
                 "methods": "tab:blue"}


def command(name: str, out: Path, corpus: str = "ptbc-small") -> list[str]:
    run = RUNS[name]
    if run.model_of:
        return command(run.model_of, out.parent / run.model_of, corpus)
    cmd = ["python", "-m", "ccflow", "train", "--config", "small", "--out", str(out), "--epochs", str(EPOCHS),
           "--threads", "1"]
    sets = [*BUDGET, *run.overrides] + ([f"data.corpus={corpus}"] if corpus != "ptbc-small" else [])
    if run.teacher:
        sets.append(f'train.distill="{out.parent / run.teacher / "model.pt"}"')
    for o in sets:
        cmd += ["--set", o]
    return cmd


def train(name: str, out: Path, corpus: str) -> None:
    cmd = command(name, out, corpus)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "python"))
    with open(out.parent / f"{out.name}.log", "a") as log:
        log.write(shlex.join(cmd) + "\n")
        log.flush()
        subprocess.run([sys.executable, *cmd[1:], "--resume"], check=True, stdout=log, stderr=subprocess.STDOUT,
                       env=env, cwd=REPO)


def measure(name: str, out: Path, corpus: str) -> dict:
    """The record of a finished run: BPC float and fixed point, the packing stage's figures."""
    import torch

    from ccflow.checkpoint import load_model, read_checkpoint
    from ccflow.corpus import load_corpus
    from ccflow.evaluate import evaluate
    from ccflow.golden import fixed_point_bpc
    from ccflow.pack import FloatModel, pack_model
    from ccflow.quantize import quantize

    trained = load_model(out / "model.pt")
    cfg = trained.config
    test = load_corpus(cfg.data.corpus, vocab=trained.vocab).test
    with torch.no_grad():
        test_bpc = evaluate(trained.model, test, cfg.train.test_batch_size, cfg.train.bptt)
    fm = FloatModel.from_torch(trained.model)
    packed = pack_model(fm, cfg.array, trained.packings)
    design = quantize(fm, cfg.array, trained.packings)
    assert design.packed_cells == packed.packed_cells  # one definition (ccflow.pack)
    streams = 64
    fixed = fixed_point_bpc(design, test, streams)
    with torch.no_grad():
        float_streams = evaluate(trained.model, test, streams, cfg.train.bptt)
    run = RUNS[name]
    # Bank-balanced sparsity runs on its own hardware (one PE per bank, Cao et al.): its cells are its
    # nonzeros. Every other run is counted on the MX array, as ccflow would execute it.
    cells = packed.nnz if run.family == "bank-balanced" else packed.packed_cells
    seconds = read_checkpoint(out / "checkpoint.pt")["train"]["elapsed"]
    return dict(name=name, family=run.family, label=run.label, test_bpc=round(test_bpc, 5),
                fixed_point_bpc=round(fixed, 5), float_bpc_streams=round(float_streams, 5), bpc_streams=streams,
                packed_cells=cells, array_cells=packed.packed_cells, dense_cells=packed.dense_cells,
                nonzero_weights=packed.nnz, valid_bpc=round(trained.valid_bpc, 5), model_epoch=trained.epoch,
                epochs=cfg.train.epochs, width=cfg.model.nhid, train_cpu_s=round(seconds),
                array=f"{cfg.array.rows}x{cfg.array.cols}, alpha {cfg.array.alpha}", tiles=design.n_tiles,
                corpus=corpus, command=shlex.join(command(name, Path("runs") / name, corpus)))


def pareto(records: list[dict]) -> set[str]:
    """Names of the records no other record beats on both packed cells and test BPC."""
    front = set()
    for r in records:
        if not any(o["packed_cells"] <= r["packed_cells"] and o["test_bpc"] <= r["test_bpc"]
                   and (o["packed_cells"], o["test_bpc"]) != (r["packed_cells"], r["test_bpc"]) for o in records):
            front.add(r["name"])
    return front


HARDWARE_PEERS = ("dense", "bank-balanced")  # the baselines; every other family is a ccflow method


def reference(records: list[dict]) -> dict | None:
    """The dense 3 x 256 model the targets are stated against: its best dropout, as every width gets."""
    dense256 = [r for r in records if r["family"] == "dense" and r.get("width") == 256]
    return min(dense256, key=lambda r: r["test_bpc"]) if dense256 else None


def curve_at(records: list[dict], family: str, cells: int) -> float | None:
    """The family's best BPC at ``cells``, interpolated on log cells between its Pareto points.

    Above the family's largest run, that run's BPC: a model that fits in fewer cells fits in more
    (a floor, not an extrapolation of the trend). None below its smallest run.
    """
    runs = [r for r in records if r["family"] == family]
    best = pareto(runs)
    front = sorted((r["packed_cells"], r["test_bpc"]) for r in runs if r["name"] in best)
    for (c0, b0), (c1, b1) in zip(front, front[1:]):
        if c0 <= cells <= c1:
            t = (math.log(cells) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return b0 + t * (b1 - b0)
    if front and cells >= front[-1][0]:
        return front[-1][1]
    return None


def targets(records: list[dict]) -> list[str]:
    """Issue 9's targets, checked on the records: one markdown bullet each."""
    ref = reference(records)
    if ref is None:
        return []
    lines = [f"Against {ref['name']} ({ref['test_bpc']:.4f} test BPC, {ref['packed_cells']:,} cells; the dense 3 x 256 run of lowest BPC):"]
    for fewer, within in ((4, 0.02), (8, 0.06)):
        fits = [r for r in records if r["family"] not in HARDWARE_PEERS and r["packed_cells"] * fewer <= ref["packed_cells"]]
        if not fits:
            lines.append(f"- {fewer}x fewer cells within {within} BPC: no packed run with {fewer}x fewer cells yet.")
            continue
        best = min(fits, key=lambda r: r["test_bpc"])
        gap = best["test_bpc"] - ref["test_bpc"]
        verdict = "**met**" if gap <= within else "**not met**"
        valid_gap = _valid_gap(best, ref)
        on_valid = "" if valid_gap is None else f" ({valid_gap:+.4f} on the validation split)"
        lines.append(f"- {fewer}x fewer cells within {within} BPC: {verdict}; best packed run with >= {fewer}x fewer is "
                     f"{best['name']}, {gap:+.4f} BPC on {ref['packed_cells'] / best['packed_cells']:.2f}x fewer cells"
                     f"{on_valid}.")
    front = pareto([r for r in records if r["family"] not in HARDWARE_PEERS])
    ours = sorted((r for r in records if r["name"] in front), key=lambda r: r["packed_cells"])
    lines.append("- Each point of ccflow's own front against the dense and bank-balanced fronts at the same cells "
                 "(interpolated on log cells; above a family's largest run, that run's BPC; n/a below its smallest):")
    for r in ours:
        cmp = []
        for family in HARDWARE_PEERS:
            peer = curve_at(records, family, r["packed_cells"])
            if peer is None:
                cmp.append(f"{family} n/a")
                continue
            verdict = ("equal to 4 decimals" if f"{peer:.4f}" == f"{r['test_bpc']:.4f}"
                       else "better" if r["test_bpc"] < peer else "**worse**")
            cmp.append(f"{family} {peer:.4f} ({verdict})")
        lines.append(f"  - {r['name']}: {r['test_bpc']:.4f} on {r['packed_cells']:,} cells; " + ", ".join(cmp))
    return lines


def plot(records: list[dict], img: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    front = pareto(records)
    fig, ax = plt.subplots(figsize=(8, 5))
    for family, color in FAMILY_COLORS.items():
        rs = [r for r in records if r["family"] == family]
        if rs:
            ax.scatter([r["packed_cells"] for r in rs], [r["test_bpc"] for r in rs], color=color, label=family,
                       s=[60 if r["name"] in front else 25 for r in rs],
                       edgecolors=["black" if r["name"] in front else "none" for r in rs], zorder=3)
    best = sorted((r for r in records if r["name"] in front), key=lambda r: r["packed_cells"])
    if best:
        ax.step([r["packed_cells"] for r in best], [r["test_bpc"] for r in best], where="post", color="black",
                lw=0.8, ls="--", label="Pareto front", zorder=2)
        # Front points can sit close together (same cells, same BPC): numbers by the points, names in a list.
        for i, r in enumerate(best, 1):
            ax.annotate(str(i), (r["packed_cells"], r["test_bpc"]), fontsize=6, xytext=(4 - 10 * (i % 2), 4),
                        textcoords="offset points", fontweight="bold")
        ax.text(0.42, 0.97, "Pareto front:\n" + "\n".join(f"{i} {r['name']}" for i, r in enumerate(best, 1)),
                transform=ax.transAxes, va="top", fontsize=6, family="monospace")
    ax.set_xscale("log")
    ax.set_xlabel("packed array cells per token (every matrix, decoder included; bank-balanced: nonzeros)")
    ax.set_ylabel(f"test BPC ({_corpus(records)}, float)")
    ax.set_title(f"small preset, {EPOCHS} epochs each: test BPC against array cells")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    corpus = _corpus(records)
    path = img / ("bpc_vs_packed_cells.png" if corpus == "ptbc-small" else f"bpc_vs_packed_cells-{Path(corpus).parent.name or corpus}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _valid_gap(run: dict, ref: dict) -> float | None:
    """The run's BPC minus the reference's on the validation split, where both were recorded.

    The targets are read on the test split; the validation gap is shown beside it because on a corpus whose
    splits differ in kind (Tiny Shakespeare's test split ends with a play absent from training) the two disagree."""
    if run.get("valid_bpc") is None or ref.get("valid_bpc") is None:
        return None
    return run["valid_bpc"] - ref["valid_bpc"]


def _corpus(records: list[dict]) -> str:
    return records[0].get("corpus", "ptbc-small") if records else "ptbc-small"


def report(records: list[dict], doc: Path, image: Path) -> None:
    front = pareto(records)
    ref = reference(records)
    order = {f: i for i, f in enumerate(FAMILY_COLORS)}
    records = sorted(records, key=lambda r: (order.get(r["family"], 99), -r["packed_cells"], r["name"]))
    cpu = sum(r["train_cpu_s"] for r in records)
    corpus = _corpus(records)
    about = ("ptbc-small trains on 90% of PTB-char's *validation* text (354k characters): these BPC are "
             "comparable with each other only, not with published PTB-char results." if corpus == "ptbc-small"
             else "")
    lines = [
        f"# The BPC-versus-array-cells frontier on {corpus} (`make experiments`)",
        "",
        f"Same budget for every run: the `small` preset on `{corpus}`, {EPOCHS} epochs, lr divided by 10",
        f"after epochs 32 and 37, one thread per run. {about}",
        f"Every record, with the command that made it, is in [{doc.with_suffix('.json').name}]"
        f"({doc.with_suffix('.json').name}).",
        "",
        f"{len(records)} runs, at most {cpu / 3600:.1f} CPU hours of training (the sum of the runs' training wall times,",
        "one thread each, two or three at a time on a 2-core machine). **Bold**: on the Pareto front (no run has",
        "fewer cells *and* lower BPC).",
        "",
        f"| run | family | test BPC | vs {ref['name'] if ref else 'dense 3 x 256'} | valid BPC (vs) | fixed-point BPC "
        "| packed cells | fewer cells | nonzero weights |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        name = f"**{r['name']}**" if r["name"] in front else r["name"]
        delta = f"{r['test_bpc'] - ref['test_bpc']:+.4f}" if ref else ""
        fewer = f"{ref['packed_cells'] / r['packed_cells']:.2f}x" if ref else ""
        valid_gap = _valid_gap(r, ref) if ref else None
        valid = "" if r.get("valid_bpc") is None else f"{r['valid_bpc']:.4f}" + (
            f" ({valid_gap:+.4f})" if valid_gap is not None else "")
        lines.append(f"| {name} ({r['label']}) | {r['family']} | {r['test_bpc']:.4f} | {delta} | {valid} "
                     f"| {r['fixed_point_bpc']:.4f} | {r['packed_cells']:,} | {fewer} | {r['nonzero_weights']:,} |")
    lines += [
        "",
        "- *test BPC*: `ccflow eval` protocol, one stream over the whole test split, float model.",
        "- *valid BPC (vs)*: the same on the validation split (the split training keeps its best epoch by), and its",
        "  gap to the reference: where it differs from the test gap, the splits disagree and the gaps are that uncertain.",
        "- *fixed-point BPC*: the integer golden model of the design `ccflow rtl` builds (8-bit weights),",
        "  on 64 parallel streams of the test split (`float_bpc_streams` in the JSON: the float model on them).",
        "- *packed cells*: the cells the array executes per token (`ccflow.pack`): every matrix, the",
        "  decoder included, in blocks of the array height (32 rows); a model never combined is laid out",
        "  conflict-free, which loses nothing. Bank-balanced runs count their nonzeros (their own hardware,",
        "  one PE per bank); `array_cells` in the JSON has their count on the MX array.",
        f"- *fewer cells*: against dense 3 x 256 ({ref['packed_cells']:,} cells)." if ref else "",
        "",
        "## Targets, checked on these runs",
        "",
        *targets(records),
        "",
        f"![test BPC against packed cells](img/{image.name})",
        "",
    ]
    kept = doc.read_text().split(KEEP, 1)[1] if doc.is_file() and KEEP in doc.read_text() else "\n"
    doc.write_text("\n".join(lines) + "\n" + KEEP + kept)


def schedule(names: list[str], runs_dir: Path) -> list[str]:
    """The order to queue runs in: what a run needs and has not been trained yet first (a distilled run needs its
    teacher, a recount its model), and the runs that wait for another last, since a waiting run holds a worker
    and must never keep an independent run from starting."""
    needed = sorted({RUNS[n].needs for n in names if RUNS[n].needs} - set(names))
    if needed and not all((runs_dir / t / "model.pt").is_file() for t in needed):
        names = needed + names
    return sorted(names, key=lambda n: RUNS[n].needs in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated run names (default: all; --list shows them)")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at the same time, one thread each")
    ap.add_argument("--out", default=str(REPO / "build" / "experiments"), help="run folders")
    ap.add_argument("--corpus", default="ptbc-small",
                    help="another corpus for the same runs (e.g. ../shared/data/tinyshakespeare/input.txt); "
                         "give it its own --json, --doc and --out")
    ap.add_argument("--json", default=str(REPO / "docs" / "results.json"), help="the records, merged by name")
    ap.add_argument("--doc", default=str(REPO / "docs" / "results.md"))
    ap.add_argument("--report", action="store_true", help="only rewrite the table and plot from --json")
    ap.add_argument("--list", action="store_true", help="list the runs and exit")
    args = ap.parse_args()
    if args.list:
        for name, run in RUNS.items():
            print(f"{name:<18} {run.family:<22} {run.label}")
        return
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; `python bench/experiments.py --list` shows the known ones")
    store = Path(args.json)

    def stored() -> dict:  # read afresh before each write: another sweep may have added records meanwhile
        return {r["name"]: r for r in json.loads(store.read_text())} if store.is_file() else {}

    failed: list[str] = []  # runs whose training did not finish
    if not args.report:
        import torch

        runs_dir = Path(args.out)
        runs_dir.mkdir(parents=True, exist_ok=True)
        names = schedule(names, runs_dir)
        t0 = time.time()
        lock = threading.Lock()

        def run(n: str, needed) -> bool:
            """Train and record run ``n``; False if it (or the run it needs) did not finish."""
            if needed and not needed.result():
                print(f"skipped {n}: {RUNS[n].needs} did not finish", flush=True)
                return False
            folder = runs_dir / (RUNS[n].model_of or n)
            if not RUNS[n].model_of:
                try:
                    train(n, folder, args.corpus)
                except subprocess.CalledProcessError as e:  # killed or failed: the other runs go on
                    print(f"{n} did not finish (training exited {e.returncode}): see {folder}.log", flush=True)
                    return False
            record = measure(n, folder, args.corpus)  # recorded as soon as trained: a sweep cut short keeps its runs
            with lock:
                store.write_text(json.dumps(list((stored() | {n: record}).values()), indent=1) + "\n")
                print(f"recorded {n} ({time.time() - t0:.0f} s so far): {json.dumps(record)}", flush=True)
            return True

        torch.set_num_threads(1)  # measuring shares the cores with the trainings
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {}
            for n in names:  # what is needed was queued first; the runs needing it wait for it
                futures[n] = pool.submit(run, n, futures.get(RUNS[n].needs))
            failed = [n for n, f in futures.items() if not f.result()]
    records = stored()
    listed = [records[n] for n in RUNS if n in records]
    doc = Path(args.doc)
    report(listed, doc, plot(listed, doc.parent / "img"))
    print(f"wrote {doc} ({len(listed)} runs)")
    if failed:
        raise SystemExit(f"{len(failed)} run(s) did not finish: {','.join(failed)}; rerun them with "
                         f"--only {','.join(failed)} (they resume from their last checkpoint)")


if __name__ == "__main__":
    main()
