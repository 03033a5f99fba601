"""Data parallel training under torchrun: 2 CPU processes on gloo, as on 2 GPUs with nccl.

One torchrun launch runs two trainings in the same workers: a dropout-free run
whose result must match a single-process run (DDP averages the gradients of
the two halves of the batch, which equals the gradient of the whole batch), and
a run with every dropout, pruning and a combine step, whose weights, masks and
packings must be identical on both ranks.
"""

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from ccflow.checkpoint import read_checkpoint
from ccflow.config import load_config
from ccflow.train import run_training


WORKER = r"""
import json, os, sys, torch
import torch.distributed as dist
from pathlib import Path
from ccflow.config import load_config
from ccflow.prune import packing_stats
from ccflow.train import Trainer

rank = int(os.environ["RANK"])
(Path(sys.argv[2]) / f"pid{rank}").write_text(str(os.getpid()))
dist.init_process_group("gloo")  # once for both runs: Trainer uses a group that exists
for name, overrides in json.loads(sys.argv[1]).items():
    out = Path(sys.argv[2]) / name
    trainer = Trainer(load_config("tiny", overrides), out)
    try:
        trainer.fit()
        layers = trainer.model.layers
        torch.save({
            "weights": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "masks": [(l.mask_ih.clone(), l.mask_hh.clone()) for l in layers],
            "packings": None if trainer.packings is None else {l: p.to_dict() for l, p in trainer.packings.items()},
            "stats": packing_stats(trainer.model, trainer.packings, trainer.cfg.array),
            "mismatches": trainer.mask_mismatches,
            "world": trainer.world, "local_batch": trainer.local_batch, "threads": torch.get_num_threads(),
        }, out / f"rank{rank}.pt")
    finally:
        trainer.close()
dist.destroy_process_group()
"""


def _overrides(corpus, *extra):
    return [f'data.corpus="{corpus}"', "train.max_batches=4", "train.epochs=3", "train.log_interval=2", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    corpus = tmp / "text.txt"
    corpus.write_text((Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()[:40_000])
    jobs = {
        "exact": _overrides(corpus, "model.dropout=0", "model.dropouth=0", "model.dropouti=0", "model.wdrop=0",
                            "prune.sparsity=0", "combine.epochs=[]"),
        "schedule": _overrides(corpus, "model.dropoute=0.1", "prune.sparsity=0.6", "prune.start_epoch=1",
                               "prune.ramp_epochs=2", "combine.epochs=[3]"),
    }
    env = dict(os.environ, CCFLOW_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), json.dumps(jobs), str(tmp)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        for pid in tmp.glob("pid*"):  # torchrun puts its workers in sessions of their own
            try:
                os.kill(int(pid.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    assert proc.returncode == 0, output[-4000:]
    with pytest.MonkeyPatch.context() as mp:  # the single-process reference, on one thread like each rank
        mp.setenv("CCFLOW_CACHE", str(tmp / "cache"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run_training(load_config("tiny", jobs["exact"]), tmp / "single")
        finally:
            torch.set_num_threads(threads)
    ranks = {name: [torch.load(tmp / name / f"rank{r}.pt", weights_only=False) for r in (0, 1)] for name in jobs}
    return tmp, ranks


def test_each_rank_takes_half_the_batch_on_its_own_core(runs):
    _, ranks = runs
    for r in ranks["exact"]:
        assert r["world"] == 2 and r["local_batch"] == 16 and r["threads"] == 1


def test_ddp_matches_single_process_training(runs):
    tmp, ranks = runs
    single = read_checkpoint(tmp / "single" / "checkpoint.pt")["model"]
    ddp = ranks["exact"][0]["weights"]
    for k, v in single.items():
        assert torch.allclose(ddp[k], v, atol=2e-5, rtol=1e-4), f"{k}: {(ddp[k] - v).abs().max()}"
    # and the logged losses agree: rank 0 logs the loss over both halves of the batch
    import csv
    logs = []
    for d in (tmp / "single", tmp / "exact"):
        with open(d / "log.csv", newline="") as f:
            logs.append([(r["kind"], r["step"], float(r["train_bpc"] or 0), float(r["valid_bpc"] or 0))
                         for r in csv.DictReader(f)])
    assert [r[:2] for r in logs[0]] == [r[:2] for r in logs[1]]
    for a, b in zip(*logs):
        assert a[2] == pytest.approx(b[2], abs=1e-4) and a[3] == pytest.approx(b[3], abs=1e-4)


def test_masks_and_packings_are_identical_on_every_rank(runs):
    tmp, ranks = runs
    r0, r1 = ranks["schedule"]
    assert r0["mismatches"] == 0 and r1["mismatches"] == 0, "ranks computed different masks"
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
    for (a0, b0), (a1, b1) in zip(r0["masks"], r1["masks"]):
        assert torch.equal(a0, a1) and torch.equal(b0, b1)
    assert r0["packings"] is not None and r0["packings"] == r1["packings"]
    assert r0["stats"] == r1["stats"] and r0["stats"][0] < 0.45 * 69632
    # what rank 0 saved is what every rank trained with
    saved = read_checkpoint(tmp / "schedule" / "checkpoint.pt")
    assert all(torch.equal(saved["model"][k], r1["weights"][k]) for k in saved["model"])
