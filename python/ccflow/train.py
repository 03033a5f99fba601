"""Training: the AWD-LSTM loop with pruning and column combining on a schedule.

One epoch = one pass over the training split in random-length BPTT chunks (the
toolkit's recipe: ``bptt`` with probability 0.95 else ``bptt/2``, then
``max(5, int(N(that, 5)))`` tokens, lr scaled by ``seq_len/bptt``). After the
epoch: prune toward the ramp's sparsity, combine if scheduled (``prune.py``),
evaluate on valid, log, drop the lr after the ``when`` epochs, checkpoint.

Files in ``out_dir``: ``checkpoint.pt`` (everything ``--resume`` needs, written
every epoch and on SIGINT/SIGTERM), ``model.pt`` (the weights downstream
stages use: the best valid BPC among epochs whose masks are final; the latest
before that), ``log.csv``.

Run it under ``torchrun --nproc_per_node N`` for data parallel training: each
process takes ``batch_size / N`` of the streams, DDP averages the gradients,
and the masks and packings are computed on every rank from identical weights,
then rank 0's are broadcast and any disagreement is reported.
"""

from __future__ import annotations

import csv
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from .config import Config, ConfigError
from .corpus import load_corpus
from .evaluate import batchify, evaluate
from .model import LSTMLanguageModel, detach_hidden
from .outdir import check_out_dir
from .prune import (apply_schedule, dense_cells, doomed_weights, enforce_masks, final_mask_epoch, l1_penalty,
                    live_mask_entries, mask_optimizer_state, masked_matrices, nonzero_weights, packing_stats,
                    shrink_doomed, soft_phase_starts)
from .runtime import choose_threads, resolve_device, set_threads

LOG_COLUMNS = ("kind", "epoch", "step", "train_bpc", "valid_bpc", "lr", "ms_per_batch", "chars_per_s",
               "nonzero_weights", "sparsity", "packed_cells", "utilization", "elapsed_s")
# Keys that may change when resuming: they do not alter what has been computed so far.
RESUMABLE_CHANGES = ("name", "train.epochs", "train.log_interval")
LN2 = math.log(2)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a step; the state is in checkpoint.pt."""


def run_training(cfg: Config, out_dir: Path, resume: bool = False, device: str | None = None,
                 threads: int | None = None) -> Path:
    """Train ``cfg`` into ``out_dir`` and return ``out_dir/model.pt``.

    ``resume`` continues checkpoint.pt exactly where it stopped (a finished run
    is left as is; without a checkpoint a new run starts). Without ``resume``
    an existing run in ``out_dir`` is refused rather than overwritten. ``threads``:
    CPU threads (default: :func:`ccflow.runtime.choose_threads` by model size and free cores).
    """
    if cfg.model.arch != "lstm":
        from .cnn_train import run_cnn_training

        return run_cnn_training(cfg, Path(out_dir), resume, device, threads)
    trainer = Trainer(cfg, Path(out_dir), resume, device, threads)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer.out_dir / "model.pt"


class Trainer:
    def __init__(self, cfg: Config, out_dir: Path, resume: bool = False, device: str | None = None,
                 threads: int | None = None):
        self.cfg, self.out_dir, self.threads = cfg, check_out_dir(out_dir), threads
        choose_threads(threads)  # a bad --threads or OMP_NUM_THREADS fails before any work
        self.ckpt_path, self.model_path, self.log_path = (out_dir / n for n in ("checkpoint.pt", "model.pt", "log.csv"))
        self._old_handlers, self.owns_group = {}, False
        self._setup_distributed(device)
        try:
            self._build(resume)
        except BaseException:
            self.close()
            raise

    def _build(self, resume: bool) -> None:
        cfg, t = self.cfg, self.cfg.train
        if t.batch_size % self.world:
            raise ConfigError(f"train.batch_size={t.batch_size} must divide evenly over {self.world} processes; "
                              f"set train.batch_size to a multiple of {self.world}")
        saved = self._read_resume(resume)
        set_seeds(t.seed)
        if self.world > 1 and self.rank != 0:
            dist.barrier()  # rank 0 tokenizes and fills the corpus cache first; the others then read it
        self.corpus = load_corpus(cfg.data.corpus, vocab=tuple(saved["vocab"]) if saved else None)
        if self.world > 1 and self.rank == 0:
            dist.barrier()
        self.model = LSTMLanguageModel(self.corpus.ntokens, cfg.model).to(self.device)
        self.teacher = None
        if t.distill:  # same symbols in the same order, or its logits mean something else
            try:
                self.teacher = ckpt.load_model(t.distill, self.device, vocab=self.corpus.vocab).model
            except ckpt.CheckpointError as e:
                raise ConfigError(f"train.distill (the teacher): {e}") from None
            self.teacher.requires_grad_(False)
        if self.device.type == "cpu":
            set_threads(self.threads, sum(p.numel() for p in self.model.parameters()))
        torch.manual_seed(t.seed + self.rank)  # own dropout draws per rank; weights come from rank 0 anyway
        params = list(self.model.parameters())
        if t.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.wdecay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=t.lr, weight_decay=t.wdecay)
        self.train_data = batchify(self.corpus.train, t.batch_size, self.device)
        per = t.batch_size // self.world
        self.train_data = self.train_data[:, self.rank * per:(self.rank + 1) * per].contiguous()
        self.local_batch = per
        # schedule position and bookkeeping, all saved in checkpoint.pt
        self.epoch, self.step, self.lr = 0, 0, t.lr
        self.best_valid, self.best_epoch, self.packings = math.inf, 0, None
        self.doomed = None  # combine-aware pruning: weights shrunk until the next combine (prune.doomed_weights)
        self._stats_key, self._stats_value = None, None  # packing figures, cached while the masks stand
        self.log_rows, self.pos, self.elapsed = 0, None, 0.0
        if saved:
            self._restore(saved)
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False)  # masks are synced by _sync_masks when they change
        self.stop_signal, self.mask_mismatches = None, 0
        if self.rank == 0:
            self._open_log()

    # --- setup ----------------------------------------------------------------

    def _setup_distributed(self, device: str | None) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            if self.device.index is None:  # one GPU per process under torchrun
                self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True

    def _read_resume(self, resume: bool) -> dict | None:
        return read_resume(self.cfg, self.out_dir, resume, quiet=self.rank != 0)

    def _restore(self, saved: dict) -> None:
        tr = saved["train"]
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(tr["optimizer"])
        self.packings = ckpt.packings_from_plain(saved["packings"])
        if tr.get("doomed") is not None:
            self.doomed = [tuple(m.to(self.device) for m in pieces) for pieces in tr["doomed"]]
        self.epoch, self.step, self.lr = saved["epoch"], tr["step"], tr["lr"]
        self.best_valid, self.best_epoch = tr["best_valid"], tr["best_epoch"]
        self.log_rows, self.elapsed = tr["log_rows"], tr["elapsed"]
        ranks = tr["ranks"]
        if len(ranks) != self.world and tr["pos"] is not None:
            raise ConfigError(f"{self.ckpt_path} was interrupted mid-epoch by {len(ranks)} processes; "
                              f"resume with {len(ranks)} (torchrun --nproc_per_node {len(ranks)})")
        set_rng_state(tr["rng"], ranks[self.rank] if self.rank < len(ranks) else None, self.device)
        if tr["pos"] is not None:
            self.pos = dict(tr["pos"], hidden=[(h.to(self.device), c.to(self.device))
                                               for h, c in ranks[self.rank]["hidden"]])

    def _open_log(self) -> None:
        self.log_rows = open_log(self.log_path, LOG_COLUMNS, self.log_rows)

    def close(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    # --- the loop ---------------------------------------------------------------

    def fit(self) -> None:
        cfg = self.cfg
        self._install_signal_handlers()
        last = final_mask_epoch(cfg)
        if self.rank == 0 and self.epoch == 0 and self.pos is None:
            n = sum(p.numel() for p in self.model.parameters())
            print(f"{cfg.name}: {n / 1e6:.2f} M parameters, {self.corpus.ntokens} symbols, {self.world} process(es) "
                  f"on {self.device}; masks final after epoch {last}", file=sys.stderr)
            if last > cfg.train.epochs:
                print(f"note: the prune/combine schedule runs to epoch {last}, past train.epochs={cfg.train.epochs}; "
                      "model.pt will be the latest epoch", file=sys.stderr)
        for epoch in range(self.epoch + 1, cfg.train.epochs + 1):
            train_bpc, ms, cps = self.train_epoch(epoch)
            if not math.isfinite(train_bpc):
                raise FloatingPointError(f"training diverged in epoch {epoch} (train BPC {train_bpc}); "
                                         f"lower train.lr (now {cfg.train.lr:g}) or train.clip and start again")
            t0 = time.perf_counter()
            self.packings, changed = apply_schedule(self.model, cfg, epoch, self.packings)
            if changed:
                self._sync_masks()
                mask_optimizer_state(self.optimizer, self.model)
            if epoch in cfg.combine.epochs:
                self.doomed = None  # cut now; a later soft phase marks afresh
            if soft_phase_starts(cfg, epoch):
                self.doomed = doomed_weights(self.model, cfg)
            valid_bpc = evaluate(self.model, self.corpus.valid, cfg.train.eval_batch_size, cfg.train.bptt, self.device)
            self.elapsed += time.perf_counter() - t0
            self._log("epoch", epoch, train_bpc, valid_bpc, self.lr, ms, cps)
            if epoch in cfg.train.when:
                self.lr /= 10
            self.epoch = epoch
            if epoch < last or valid_bpc < self.best_valid:
                if epoch >= last:
                    self.best_valid, self.best_epoch = valid_bpc, epoch
                if self.rank == 0:
                    ckpt.atomic_save(ckpt.make_checkpoint("model", cfg, self.corpus.vocab, self.model,
                                                          self.packings, epoch, valid_bpc), self.model_path)
            self._save(valid_bpc)
            if self.rank == 0:
                nnz = self._stats()[0]
                best = f"best {self.best_valid:.4f} (epoch {self.best_epoch})" if self.best_epoch else "masks not final"
                tqdm.write(f"epoch {epoch:3d} | train {train_bpc:.4f} | valid {valid_bpc:.4f} bpc | "
                           f"{ms:.0f} ms/batch | {nnz} nonzero | {best}", file=sys.stderr)
            self._check_stop(epoch)

    def train_epoch(self, epoch: int) -> tuple[float, float, float]:
        """One pass over the training streams; returns (train BPC, ms per batch, chars per second)."""
        t, model, net = self.cfg.train, self.model, self.net
        data = self.train_data
        params = list(model.parameters())
        model.train()
        if self.pos is not None:  # resuming mid-epoch
            p, self.pos = self.pos, None
            i, batch, hidden = p["i"], p["batch"], p["hidden"]
            epoch_sums = torch.tensor(p["sums"], dtype=torch.float64, device=self.device)
            interval = torch.tensor(p["interval"] if self.rank == 0 else [0.0, 0.0], dtype=torch.float64,
                                    device=self.device)
            interval_batches, tick = p["interval_batches"], time.perf_counter() - p["interval_seconds"]
        else:
            i, batch, hidden = 0, 0, model.init_hidden(self.local_batch)
            if self.teacher is not None:  # the teacher's state runs along, after the student's layers
                hidden = hidden + self.teacher.init_hidden(self.local_batch)
            # over all ranks: summed loss, tokens, seconds, batches
            epoch_sums = torch.zeros(4, dtype=torch.float64, device=self.device)
            interval = torch.zeros(2, dtype=torch.float64, device=self.device)  # this rank's loss, tokens
            interval_batches, tick = 0, time.perf_counter()
        masks_final = epoch > final_mask_epoch(self.cfg)
        l1 = 0.0 if masks_final else self.cfg.prune.l1  # until the last mask change
        model.set_dropout_scale(t.final_dropout if masks_final else 1.0)
        total = (data.size(0) - 2) // t.bptt + 1
        if t.max_batches:
            total = min(total, t.max_batches)
        bar = tqdm(total=total, initial=batch, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
                   disable=None if self.rank == 0 else True)
        while i < data.size(0) - 2 and not (t.max_batches and batch >= t.max_batches):
            seq_len = draw_seq_len(t.bptt)
            n = min(seq_len, data.size(0) - 1 - i)
            raw_loss, hidden = train_step(net, self.optimizer, params, data[i:i + n], data[i + 1:i + 1 + n], hidden,
                                          t, self.lr * seq_len / t.bptt, l1, self.teacher)
            if self.doomed is not None:
                shrink_doomed(model, self.doomed, self.cfg.combine.soft_decay)
            interval[0] += raw_loss.detach().double() * (n * self.local_batch)
            interval[1] += n * self.local_batch
            i += seq_len
            batch += 1
            self.step += 1
            interval_batches += 1
            bar.update(1)
            end = i >= data.size(0) - 2 or bool(t.max_batches and batch >= t.max_batches)
            if batch % t.log_interval == 0 or end:
                dt = time.perf_counter() - tick
                loss_sum, tokens = self._reduce(interval.clone()).tolist()
                epoch_sums += torch.tensor([loss_sum, tokens, dt, interval_batches], dtype=torch.float64,
                                           device=self.device)
                self.elapsed += dt
                train_bpc = loss_sum / tokens / LN2
                if batch % t.log_interval == 0:
                    self._log("batch", epoch, train_bpc, None, self.lr, 1000 * dt / interval_batches, tokens / dt)
                bar.set_postfix(bpc=f"{train_bpc:.3f}", ms=f"{1000 * dt / interval_batches:.0f}")
                interval.zero_()
                tick, interval_batches = time.perf_counter(), 0
            if self._stop_requested():
                pos = {"i": i, "batch": batch, "sums": epoch_sums.tolist(), "interval": self._reduce(interval).tolist(),
                       "interval_batches": interval_batches, "interval_seconds": time.perf_counter() - tick}
                bar.close()
                self._save(math.nan, pos=pos, hidden=hidden)
                self._raise_stop(epoch, batch)
        bar.close()
        loss_sum, tokens, seconds, batches = epoch_sums.tolist()
        train_bpc = loss_sum / tokens / LN2 if tokens else math.nan
        return train_bpc, 1000 * seconds / max(batches, 1), tokens / max(seconds, 1e-9)

    # --- helpers ----------------------------------------------------------------

    def _stats(self):
        """The packing stage's figures, recomputed only when the masks or packings changed (masks only
        shrink, so their live count is a fingerprint)."""
        key = (id(self.packings), live_mask_entries(self.model))
        if self._stats_key != key:
            self._stats_key, self._stats_value = key, packing_stats(self.model, self.packings, self.cfg.array)
        return self._stats_value

    def _log(self, kind, epoch, train_bpc, valid_bpc, lr, ms, cps) -> None:
        if self.rank != 0:
            return
        nnz, cells, util = self._stats()
        row = [kind, epoch, self.step, _fmt(train_bpc), _fmt(valid_bpc), f"{lr:.6g}", f"{ms:.2f}", f"{cps:.1f}",
               nnz, f"{1 - nonzero_weights(self.model) / dense_cells(self.model):.6f}", cells, f"{util:.6f}", f"{self.elapsed:.2f}"]
        with open(self.log_path, "a", newline="") as f:
            csv.writer(f).writerow(row)
        self.log_rows += 1

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks: loss and token counts (the same call on every rank at the same batches)."""
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def _sync_masks(self) -> None:
        """Make rank 0's masks and packings everyone's, and say if any rank had computed different ones."""
        if self.world == 1:
            return
        differs = torch.zeros(1, device=self.device)
        for mm in masked_matrices(self.model):
            for _, m in mm.pairs:
                ref = m.to(torch.uint8)
                dist.broadcast(ref, 0)
                differs += (ref.bool() != m).sum()
                m.copy_(ref.bool())
        box = [self.packings]
        dist.broadcast_object_list(box, 0)
        self.packings = box[0]
        dist.all_reduce(differs)
        self.mask_mismatches = int(differs.item())
        if self.mask_mismatches:
            print(f"warning: {self.mask_mismatches} mask entries differed from rank 0's and were replaced",
                  file=sys.stderr)
        enforce_masks(self.model)

    def _save(self, valid_bpc: float, pos: dict | None = None, hidden=None) -> None:
        """checkpoint.pt with everything needed to continue bit for bit (collective under DDP)."""
        mine = {"rng_torch": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "hidden": [[h.detach().cpu(), c.detach().cpu()] for h, c in hidden] if hidden is not None else None}
        ranks = [mine]
        if self.world > 1:
            ranks = [None] * self.world
            dist.all_gather_object(ranks, mine)
        if self.rank == 0:
            train = {"optimizer": self.optimizer.state_dict(), "step": self.step, "lr": self.lr,
                     "best_valid": self.best_valid, "best_epoch": self.best_epoch, "log_rows": self.log_rows,
                     "elapsed": self.elapsed, "pos": pos, "rng": get_rng_state(), "ranks": ranks,
                     "world": self.world,
                     "doomed": None if self.doomed is None else [[m.cpu() for m in pieces] for pieces in self.doomed]}
            ckpt.atomic_save(ckpt.make_checkpoint("full", self.cfg, self.corpus.vocab, self.model, self.packings,
                                                  self.epoch, valid_bpc, train), self.ckpt_path)
        if self.world > 1:
            dist.barrier()

    # --- stopping on SIGINT / SIGTERM --------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now, without saving
            self.stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _stop_requested(self) -> bool:
        flag = self.stop_signal is not None
        if self.world > 1:
            t = torch.tensor([float(flag)], device=self.device)
            dist.all_reduce(t)
            flag = bool(t.item())
        return flag

    def _check_stop(self, epoch: int) -> None:
        if self._stop_requested() and epoch < self.cfg.train.epochs:
            self._raise_stop(epoch, None)

    def _raise_stop(self, epoch: int, batch: int | None):
        where = f"epoch {epoch}, batch {batch}" if batch is not None else f"the end of epoch {epoch}"
        name = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal"
        raise TrainingInterrupted(f"{name} stopped training at {where}; state saved in {self.ckpt_path}; "
                                  "continue with --resume")


def read_resume(cfg: Config, out_dir: Path, resume: bool, quiet: bool = False) -> dict | None:
    """The checkpoint.pt in ``out_dir`` to resume from, or None for a new run; refuses to overwrite a run
    (without ``resume``) or to continue one of another configuration."""
    ckpt_path = out_dir / "checkpoint.pt"
    if not ckpt_path.exists():
        left = [n for n in ("model.pt", "log.csv") if (out_dir / n).exists()]
        if left:
            raise ConfigError(f"{out_dir} holds {' and '.join(left)} of an earlier run but no checkpoint.pt, "
                              "so --resume is impossible and a new run would replace them; choose another "
                              "--out, or delete the folder to start over")
        if resume and not quiet:
            print(f"no checkpoint in {out_dir}; starting a new run", file=sys.stderr)
        return None
    saved = ckpt.read_checkpoint(ckpt_path)
    if not resume:
        raise ConfigError(f"{out_dir} already holds a run (checkpoint.pt after epoch {saved['epoch']}); "
                          "pass --resume to continue it, or choose another --out")
    ckpt.check_compatible(ckpt_path, Config.from_dict(saved["config"]), cfg, prefixes=("",),
                          ignore=RESUMABLE_CHANGES)
    return saved


def open_log(path: Path, columns, known_rows: int) -> int:
    """Start log.csv: its header and the first ``known_rows`` rows (those the checkpoint knows of;
    rows written after it are dropped). Returns the rows kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if known_rows and path.exists():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))[1:1 + known_rows]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])
    return len(rows)


def train_step(net, optimizer, params, x, y, hidden, t, lr: float, l1: float = 0.0, teacher=None):
    """One optimizer step on chunk x -> targets y; returns (cross-entropy, new hidden).

    The masks hold after it: the forward pass used weight * mask and the raw
    weights are zeroed at masked positions once the optimizer has moved them.
    ``l1``: coefficient of an L1 penalty on the LSTM matrices (``prune.l1`` while pruning).
    ``teacher``: a model to distill from (``train.distill``); its hidden state follows the
    student's layers in ``hidden``, so it is carried and checkpointed the same way.
    """
    student = net.module if hasattr(net, "module") else net
    hidden = detach_hidden(hidden)
    own, theirs = hidden[:len(student.layers)], hidden[len(student.layers):]
    optimizer.zero_grad(set_to_none=True)
    logits, own, extras = net(x, own)
    flat = logits.reshape(-1, logits.size(-1))
    raw_loss = F.cross_entropy(flat, y.reshape(-1))
    fit = raw_loss
    if teacher is not None:
        with torch.no_grad():
            target, theirs, _ = teacher(x, theirs)
        temp = t.distill_temp
        kd = F.kl_div(F.log_softmax(flat / temp, dim=-1), F.log_softmax(target.reshape(flat.shape) / temp, dim=-1),
                      log_target=True, reduction="batchmean") * temp ** 2
        fit = (1.0 - t.distill_weight) * raw_loss + t.distill_weight * kd
    loss = regularized_loss(fit, extras, t.ar, t.tar)
    if l1:
        loss = loss + l1 * l1_penalty(student)
    loss.backward()
    if t.clip:
        torch.nn.utils.clip_grad_norm_(params, t.clip)
    for g in optimizer.param_groups:
        g["lr"] = lr
    optimizer.step()
    enforce_masks(net)
    return raw_loss, own + theirs


def draw_seq_len(bptt: int) -> int:
    """The toolkit's random BPTT length: around bptt (p=.95) or bptt/2, sd 5, at least 5."""
    base = bptt if np.random.random() < 0.95 else bptt / 2
    return max(5, int(np.random.normal(base, 5)))


def regularized_loss(raw_loss: torch.Tensor, extras: dict, ar: float, tar: float) -> torch.Tensor:
    """Cross-entropy plus AR (ar x mean square of the dropped last-layer output) and
    TAR (tar x mean square of its raw step-to-step change), the toolkit's alpha and beta."""
    loss = raw_loss
    if ar:
        loss = loss + ar * extras["dropped"].pow(2).mean()
    if tar:
        loss = loss + tar * (extras["raw"][1:] - extras["raw"][:-1]).pow(2).mean()
    return loss


# --- RNG state --------------------------------------------------------------------


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all devices


def get_rng_state() -> dict:
    """Python and numpy generator states as plain data (torch's are saved per rank)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {"python": [version, list(state), gauss],
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])}}


def set_rng_state(rng: dict, mine: dict | None, device: torch.device) -> None:
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    n = rng["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if mine is not None:
        torch.set_rng_state(mine["rng_torch"])
        if device.type == "cuda" and mine["rng_cuda"] is not None:
            torch.cuda.set_rng_state(mine["rng_cuda"], device)


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"
