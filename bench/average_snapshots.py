"""Weight averaging, measured after the fact: the validation and test BPC of the mean of a run's
end-of-epoch weights over an epoch range (SWA / Polyak averaging at epoch granularity).

Training writes only the latest ``checkpoint.pt``, so the snapshots are copies of it taken after
each epoch into one folder (any names ending in ``.pt``; each copy knows its epoch), for example
beside a running training::

    while sleep 20; do cmp -s RUN/checkpoint.pt SNAP/last.pt || { cp RUN/checkpoint.pt SNAP/last.pt;
        cp SNAP/last.pt SNAP/$(date +%s).pt; }; done

Average only epochs after the last mask change (``masks final after epoch N`` in the training
log): every snapshot then has the same masks, so the mean keeps them. Float tensors are averaged;
masks and other buffers come from the last snapshot of the range.

    python bench/average_snapshots.py SNAP 0 36 21-32

prints one line per range: ``0`` is the last snapshot alone, ``S`` epochs S to the last, ``S-E``
epochs S to E. docs/results.md has what it measured on the 8x and 4x runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ccflow import checkpoint as ckpt
from ccflow.config import Config
from ccflow.corpus import load_corpus
from ccflow.evaluate import evaluate
from ccflow.model import LSTMLanguageModel


def epoch_range(spec: str, last: int) -> tuple[int, int]:
    lo, _, hi = spec.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()):
        raise SystemExit(f"error: range {spec!r} must be N, S or S-E (epochs)")
    return (last, last) if int(lo) == 0 else (int(lo), int(hi or last))


def epoch_snapshots(folder: Path) -> dict[int, Path]:
    """{epoch: a copy of checkpoint.pt written at its end}; copies from inside an epoch (stopped by
    a signal) are left out."""
    found = {}
    for path in sorted(folder.glob("*.pt")):
        saved = ckpt.read_checkpoint(path)
        if saved.get("train", {}).get("pos") is None:
            found[int(saved["epoch"])] = path
    return found


def averaged_state(paths: list[Path]) -> dict:
    """The mean of the float tensors of the snapshots' weights; the rest from the last snapshot."""
    state = ckpt.read_checkpoint(paths[-1])["model"]
    sums = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items() if v.is_floating_point()}
    for path in paths:
        weights = ckpt.read_checkpoint(path)["model"]
        for k in sums:
            sums[k] += weights[k].double()
    return {**state, **{k: (s / len(paths)).to(state[k].dtype) for k, s in sums.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("snapshots", type=Path, help="folder of end-of-epoch copies of checkpoint.pt")
    ap.add_argument("ranges", nargs="+", help="0 (the last epoch), S (S to the last) or S-E")
    args = ap.parse_args(argv)
    for spec in args.ranges:
        epoch_range(spec, 0)  # a malformed range fails before the snapshots are read
    found = epoch_snapshots(args.snapshots)
    if not found:
        raise SystemExit(f"error: no end-of-epoch checkpoint.pt copies in {args.snapshots}")
    last = max(found)
    saved = ckpt.read_checkpoint(found[last])
    cfg = Config.from_dict(saved["config"])
    corpus = load_corpus(cfg.data.corpus, vocab=tuple(saved["vocab"]))
    model = LSTMLanguageModel(len(saved["vocab"]), cfg.model)
    torch.set_num_threads(1)
    t = cfg.train
    for spec in args.ranges:
        lo, hi = epoch_range(spec, last)
        epochs = [e for e in sorted(found) if lo <= e <= hi]
        if not epochs:
            raise SystemExit(f"error: no snapshots of epochs {lo}-{hi} in {args.snapshots}")
        model.load_state_dict(averaged_state([found[e] for e in epochs]))
        valid = evaluate(model, corpus.split("valid"), t.eval_batch_size, t.bptt)
        test = evaluate(model, corpus.split("test"), t.test_batch_size, t.bptt)
        print(f"epochs {epochs[0]}..{epochs[-1]} ({len(epochs)}): valid {valid:.4f} test {test:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
