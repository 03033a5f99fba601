"""Time per training step: dense vs masked+combined vs a plain torch.nn.LSTM model.

BRIEF section 10 asks that training with masks and the combining schedule
stay within 10% of the time per step of the same model without them. Three
variants of each preset, same batch and bptt, synthetic tokens, timed in the
same process with the variants interleaved round by round (so a slow spell of
a shared machine hits all three alike); the figure is the median:

* dense       -- LSTMLanguageModel as trained, masks all on (ccflow.train.train_step)
* masked      -- the same after pruning to 80% and one combine step (alpha and
                 row block from the preset's array); every step masks in forward
                 and zeroes the pruned weights after the optimizer step
* torch-lstm  -- embedding + nn.LSTM per layer + tied linear: what the fused kernel costs alone

Usage: python bench/bench_train.py [--presets ptbc-paper,small] [--steps 3] [--warmup 1]
It ends with "PRESET masked/dense RATIO" and "PRESET dense/torch-lstm RATIO" lines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ccflow.config import load_config
from ccflow.model import LSTMLanguageModel
from ccflow.pack import FloatModel, pack_model
from ccflow.prune import combine_model, enforce_masks, prune_layer
from ccflow.train import train_step

NTOKEN = 50  # PTB-char's vocabulary


class TorchLSTMModel(nn.Module):
    def __init__(self, ntoken, cfg):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, cfg.emsize)
        sizes = [cfg.emsize] + [cfg.nhid] * (cfg.nlayers - 1) + [cfg.emsize]
        self.layers = nn.ModuleList(nn.LSTM(sizes[l], sizes[l + 1]) for l in range(cfg.nlayers))
        self.decoder = nn.Linear(cfg.emsize, ntoken)
        self.decoder.weight = self.encoder.weight

    def forward(self, x):
        x = self.encoder(x)
        for layer in self.layers:
            x, _ = layer(x)
        return self.decoder(x)


def torch_lstm_step(model, optimizer, x, y, clip, lr):
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    for g in optimizer.param_groups:
        g["lr"] = lr
    optimizer.step()


def bench_preset(name: str, steps: int, warmup: int, device: str) -> tuple[float, float]:
    cfg = load_config(name)
    t = cfg.train
    torch.manual_seed(0)
    tokens = torch.randint(0, NTOKEN, (t.bptt + 1, t.batch_size), device=device)
    x, y = tokens[:-1], tokens[1:]

    dense = LSTMLanguageModel(NTOKEN, cfg.model).to(device)
    masked = LSTMLanguageModel(NTOKEN, cfg.model).to(device)
    masked.load_state_dict(dense.state_dict())
    for layer in masked.layers:
        prune_layer(layer, 0.8)
    t0 = time.perf_counter()
    packings = combine_model(masked, cfg)
    combine_s = time.perf_counter() - t0
    enforce_masks(masked)
    ref = TorchLSTMModel(NTOKEN, cfg.model).to(device)

    runs = {}
    for label, model in (("dense", dense), ("masked", masked)):
        opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.wdecay)
        state = {"hidden": model.init_hidden(t.batch_size)}
        params = list(model.parameters())

        def step(model=model, opt=opt, state=state, params=params):
            model.train()
            _, state["hidden"] = train_step(model, opt, params, x, y, state["hidden"], t, t.lr)
        runs[label] = step
    ref_opt = torch.optim.Adam(ref.parameters(), lr=t.lr, weight_decay=t.wdecay)
    runs["torch-lstm"] = lambda: torch_lstm_step(ref, ref_opt, x, y, t.clip, t.lr)

    times = {k: [] for k in runs}
    for r in range(warmup + steps):
        for label, step in runs.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if r >= warmup:
                times[label].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    packed = pack_model(FloatModel.from_torch(masked.cpu()), cfg.array, packings)
    masked.to(device)
    nparams = sum(p.numel() for p in dense.parameters())
    print(f"{name}: batch {t.batch_size} x bptt {t.bptt}, {nparams / 1e6:.2f} M parameters, "
          f"{torch.get_num_threads()} threads on {device}, median of {steps} steps after {warmup} warm-up")
    for k, v in med.items():
        spread = f"{min(times[k]):.3f}..{max(times[k]):.3f}"
        print(f"  {k:<11} {v:8.3f} s/step  ({spread})")
    print(f"  masked model: {packed.nnz} nonzero weights, {packed.packed_cells} packed cells of {packed.dense_cells} "
          f"({packed.dense_cells / packed.packed_cells:.2f}x fewer, decoder included); combine step took "
          f"{combine_s:.2f} s (once per scheduled epoch)")
    return med["masked"] / med["dense"], med["dense"] / med["torch-lstm"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="ptbc-paper,small", help="comma-separated presets")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ratios = {p: bench_preset(p, a.steps, a.warmup, a.device) for p in a.presets.split(",")}
    for p, (masked, dense) in ratios.items():
        print(f"{p} masked/dense {masked:.3f}")
        print(f"{p} dense/torch-lstm {dense:.3f}")


if __name__ == "__main__":
    main()
