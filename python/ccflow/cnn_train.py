"""Training a CNN (``model.arch`` lenet5 or vgg-small) with the LSTM's pruning and combining schedule.

The loop is the textbook one -- shuffled mini-batches, cross-entropy, Adam or SGD with momentum --
and everything column combining needs comes from the same places as for the LSTM: the prune
ramp, combine epochs, L1 term and combine-aware soft phase of ``prune.py`` (every Conv2d and
Linear is one matrix, ``prune.masked_matrices``), the packing stage's figures in the log
(``ccflow.pack``), the same checkpoint format and out-folder rules. The paper's recipe is a
config (``configs/lenet5-paper.toml``): 10 pruning steps over the first half on a cubic ramp,
combining after each, sparsity scaled by 1 - 1/alpha, an L1 term until the last step.

Files in ``out_dir``: ``checkpoint.pt`` (written every epoch; ``--resume`` continues after the
last finished epoch exactly: batch order comes from a generator seeded by seed and epoch, the
torch RNG state is saved), ``model.pt`` (the best valid loss among epochs whose masks are final),
``log.csv``. ``valid_bpc`` in a CNN checkpoint is the validation cross-entropy in bits per image.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from .cnn import Cnn
from .config import Config, ConfigError
from .images import ImageSet, batches, load_images
from .outdir import check_out_dir
from .prune import (apply_schedule, dense_cells, doomed_weights, enforce_masks, final_mask_epoch, l1_penalty,
                    live_mask_entries, mask_optimizer_state, nonzero_weights, packing_stats, shrink_doomed,
                    soft_phase_starts)
from .runtime import choose_threads, resolve_device, set_threads
from .train import LN2, _fmt, open_log, read_resume

LOG_COLUMNS = ("kind", "epoch", "step", "train_bits", "valid_bits", "valid_accuracy", "lr", "ms_per_batch",
               "images_per_s", "nonzero_weights", "sparsity", "packed_cells", "utilization", "elapsed_s")


def build_cnn(cfg: Config, images: ImageSet | None = None, in_shape=None, classes: int | None = None) -> Cnn:
    """The configured network for an image set (or its input shape and class count)."""
    if images is not None:
        in_shape, classes = images.shape, images.classes
    return Cnn(cfg.model.arch, tuple(in_shape), classes, cfg.model.batchnorm, cfg.model.dropout)


@torch.no_grad()
def evaluate_images(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256,
                    device="cpu") -> tuple[float, float]:
    """(cross-entropy in bits per image, accuracy) of the model in eval mode on (x, y)."""
    model.eval()
    loss, right = 0.0, 0
    for xb, yb in batches(x, y, batch_size):
        logits = model(xb.to(device))
        loss += F.cross_entropy(logits, yb.to(device), reduction="sum").item()
        right += int((logits.argmax(1).cpu() == yb).sum())
    return loss / len(y) / LN2, right / len(y)


def evaluate_image_checkpoint(path, split: str = "test", spec: str | None = None, device: str | None = None,
                              threads: int | None = None) -> tuple[float, float]:
    """(cross-entropy in bits per image, accuracy) of a saved CNN on a split of its image set (or ``spec``)."""
    choose_threads(threads)
    dev = resolve_device(device)
    tm = ckpt.load_model(path, dev)
    set_threads(threads, sum(p.numel() for p in tm.model.parameters()))
    images = load_images(spec or tm.config.data.corpus)
    if images.shape != tm.model.in_shape or images.classes != tm.model.classes:
        raise ConfigError(f"{path}: the model takes {tm.model.in_shape} images of {tm.model.classes} classes, "
                          f"{images.name} has {images.shape} of {images.classes}; evaluate on the data it was "
                          "trained on")
    return evaluate_images(tm.model, getattr(images, f"{split}_x"), getattr(images, f"{split}_y"), device=dev)


def run_cnn_training(cfg: Config, out_dir: Path, resume: bool = False, device: str | None = None,
                     threads: int | None = None) -> Path:
    """Train the CNN of ``cfg`` into ``out_dir``; returns ``out_dir/model.pt`` (as ``train.run_training``)."""
    t = cfg.train
    if t.distill:
        raise ConfigError("train.distill is for the LSTM only; leave it empty for a CNN")
    if t.final_dropout != 1.0:
        raise ConfigError("train.final_dropout is for the LSTM only; leave it at 1 for a CNN")
    out_dir = check_out_dir(Path(out_dir))
    choose_threads(threads)
    dev = resolve_device(device)
    paths = {n: out_dir / f"{n}.pt" for n in ("checkpoint", "model")}
    log_path = out_dir / "log.csv"
    saved = read_resume(cfg, out_dir, resume)

    torch.manual_seed(t.seed)
    images = load_images(cfg.data.corpus)
    model = build_cnn(cfg, images).to(dev)
    if dev.type == "cpu":
        set_threads(threads, sum(p.numel() for p in model.parameters()))
    params = list(model.parameters())
    opt = (torch.optim.Adam(params, lr=t.lr, weight_decay=t.wdecay) if t.optimizer == "adam"
           else torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.wdecay))
    classes = [str(c) for c in range(images.classes)]
    extra = {"input_shape": list(images.shape)}
    state = dict(epoch=0, step=0, lr=t.lr, best=math.inf, best_epoch=0, elapsed=0.0, log_rows=0)
    packings, doomed = None, None
    if saved:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["train"]["optimizer"])
        packings = ckpt.packings_from_plain(saved["packings"])
        state.update(saved["train"]["state"], epoch=saved["epoch"])
        torch.set_rng_state(saved["train"]["rng_torch"])
        if saved["train"].get("doomed") is not None:
            doomed = [tuple(m.to(dev) for m in pieces) for pieces in saved["train"]["doomed"]]
    state["log_rows"] = open_log(log_path, LOG_COLUMNS, state["log_rows"])
    last = final_mask_epoch(cfg)
    if state["epoch"] == 0:
        print(f"{cfg.name}: {cfg.model.arch}, {sum(p.numel() for p in params) / 1e6:.3f} M parameters, "
              f"{images.name} {images.shape} x {len(images.train_y)} train images, {images.classes} classes on {dev}; "
              f"masks final after epoch {last}", file=sys.stderr)
    stats_cache: dict = {}

    def stats():
        key = (id(packings), live_mask_entries(model))
        if key not in stats_cache:
            stats_cache.clear()
            stats_cache[key] = packing_stats(model, packings, cfg.array)
        return stats_cache[key]

    def log(kind, epoch, train_bits, valid_bits, acc, ms, ips):
        nnz, cells, util = stats()
        row = [kind, epoch, state["step"], _fmt(train_bits), _fmt(valid_bits), _fmt(acc), f"{state['lr']:.6g}",
               f"{ms:.2f}", f"{ips:.1f}", nnz, f"{1 - nonzero_weights(model) / dense_cells(model):.6f}", cells,
               f"{util:.6f}", f"{state['elapsed']:.2f}"]
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow(row)
        state["log_rows"] += 1

    for epoch in range(state["epoch"] + 1, t.epochs + 1):
        model.train()
        l1 = cfg.prune.l1 if epoch <= last else 0.0
        rng = np.random.default_rng([t.seed, epoch])  # the batch order of this epoch, whatever came before
        total, seen, n_batches, tick = 0.0, 0, 0, time.perf_counter()
        n = -(-len(images.train_y) // t.batch_size)
        if t.max_batches:
            n = min(n, t.max_batches)
        for xb, yb in tqdm(batches(images.train_x, images.train_y, t.batch_size, rng), total=n, leave=False,
                           desc=f"epoch {epoch}", disable=None):
            if t.max_batches and n_batches >= t.max_batches:
                break
            xb, yb = xb.to(dev), yb.to(dev)
            opt.zero_grad(set_to_none=True)
            raw = F.cross_entropy(model(xb), yb)
            loss = raw + l1 * l1_penalty(model) if l1 else raw
            loss.backward()
            if t.clip:
                torch.nn.utils.clip_grad_norm_(params, t.clip)
            for g in opt.param_groups:
                g["lr"] = state["lr"]
            opt.step()
            enforce_masks(model)
            if doomed is not None:
                shrink_doomed(model, doomed, cfg.combine.soft_decay)
            total += raw.item() * len(yb)
            seen += len(yb)
            n_batches += 1
            state["step"] += 1
        seconds = time.perf_counter() - tick
        state["elapsed"] += seconds
        train_bits = total / max(seen, 1) / LN2
        if not math.isfinite(train_bits):
            raise FloatingPointError(f"training diverged in epoch {epoch}; lower train.lr (now {t.lr:g}) "
                                     "and start again")
        packings, changed = apply_schedule(model, cfg, epoch, packings)
        if changed:
            mask_optimizer_state(opt, model)
        if epoch in cfg.combine.epochs:
            doomed = None
        if soft_phase_starts(cfg, epoch):
            doomed = doomed_weights(model, cfg)
        valid_bits, acc = evaluate_images(model, images.valid_x, images.valid_y, device=dev)
        log("epoch", epoch, train_bits, valid_bits, acc, 1000 * seconds / max(n_batches, 1), seen / max(seconds, 1e-9))
        if epoch in t.when:
            state["lr"] /= 10
        state["epoch"] = epoch
        if epoch < last or valid_bits < state["best"]:
            if epoch >= last:
                state["best"], state["best_epoch"] = valid_bits, epoch
            ckpt.atomic_save(ckpt.make_checkpoint("model", cfg, classes, model, packings, epoch, valid_bits,
                                                  extra=extra), paths["model"])
        train = {"optimizer": opt.state_dict(), "state": dict(state), "rng_torch": torch.get_rng_state(),
                 "doomed": None if doomed is None else [[m.cpu() for m in pieces] for pieces in doomed]}
        ckpt.atomic_save(ckpt.make_checkpoint("full", cfg, classes, model, packings, epoch, valid_bits, train,
                                              extra=extra), paths["checkpoint"])
        best = f"best {state['best']:.4f} (epoch {state['best_epoch']})" if state["best_epoch"] else "masks not final"
        tqdm.write(f"epoch {epoch:3d} | train {train_bits:.4f} | valid {valid_bits:.4f} bits, accuracy {acc:.2%} | "
                   f"{stats()[0]} nonzero, {stats()[1]} packed cells | {best}", file=sys.stderr)
    return paths["model"]
