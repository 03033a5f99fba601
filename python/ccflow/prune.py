"""Masks in training: magnitude pruning on a ramp, column combining on a schedule.

Both act on every weight matrix as the array sees it (BRIEF section 4,
:class:`MaskedMatrix`): an LSTM layer's ``[W_ih | W_hh]`` (one array pass
multiplies it by ``[x; h]``), a convolution's out x (in * kh * kw), a Linear's
W. Masks only ever shrink: a pruned weight stays zero for the rest of the run.
Three mechanisms make that hold exactly, whatever the optimizer does:

* the forward pass multiplies every weight by its mask (``MaskedLSTM``,
  ``cnn.MaskedConv2d``, ``cnn.MaskedLinear``), so a masked weight gets no
  gradient and contributes nothing;
* :func:`enforce_masks` zeroes the raw parameters at masked positions after
  every optimizer step, so momentum and weight decay cannot move them;
* :func:`mask_optimizer_state` zeroes the optimizer's moments at positions a
  mask change just removed, so no stale momentum lingers in the state either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import Config, PruneConfig
from .model import MaskedLSTM, lstm_layers


# --- the matrices ------------------------------------------------------------------


@dataclass(frozen=True)
class MaskedMatrix:
    """One weight matrix of a model as pruning and combining see it.

    ``pairs`` are its (raw weight, bool mask) pieces laid side by side as columns, each
    flattened to out x rest: ``(W_ih, W_hh)`` of an LSTM layer, the one weight of a
    convolution (out x (in * kh * kw)) or of a Linear. Pruning works in this column order;
    the array's row order differs only for the LSTM, whose rows interleave the gates unit by
    unit (``combine.lstm_matrix``).
    """

    pairs: tuple[tuple[torch.nn.Parameter, torch.Tensor], ...]
    in_x: int  # columns read from the x region; the rest read the layer's own h (LSTM)
    lstm: bool

    def weight(self) -> torch.Tensor:
        """Raw weights, out x columns (masked entries are zero after :func:`enforce_masks`)."""
        return torch.cat([p.reshape(p.shape[0], -1) for p, _ in self.pairs], dim=1)

    def mask(self) -> torch.Tensor:
        return torch.cat([m.reshape(m.shape[0], -1) for _, m in self.pairs], dim=1)

    def pieces(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        """A matrix in this column layout cut back into one tensor per piece, shaped like its weight."""
        out, start = [], 0
        for p, _ in self.pairs:
            width = p[0].numel()
            out.append(matrix[:, start:start + width].reshape(p.shape).contiguous())
            start += width
        return out

    def set_mask(self, new: torch.Tensor) -> None:
        for (_, m), piece in zip(self.pairs, self.pieces(new)):
            m.copy_(piece)

    def array_matrix(self) -> np.ndarray:
        """The masked weights in the array's row order, float32 numpy."""
        from .combine import lstm_matrix

        eff = [(p * m).detach().cpu().float().numpy() for p, m in self.pairs]
        return lstm_matrix(*eff) if self.lstm else eff[0].reshape(eff[0].shape[0], -1)

    def from_array(self, keep: np.ndarray) -> torch.Tensor:
        """A bool matrix in the array's row order -> the same in this matrix's column layout."""
        from .combine import lstm_unmatrix

        if self.lstm:
            keep = np.concatenate(lstm_unmatrix(np.asarray(keep, dtype=bool), self.in_x), axis=1)
        return torch.from_numpy(np.array(keep, dtype=bool)).to(self.pairs[0][1].device)  # a writable copy


def masked_matrices(model: torch.nn.Module) -> list[MaskedMatrix]:
    """Every prunable matrix of a model (possibly inside DistributedDataParallel), in execution order:
    the LSTM layers of a language model (not its tied embedding/decoder), every Conv2d and Linear of
    a CNN."""
    module = getattr(model, "module", model)
    if hasattr(module, "layers"):
        return [as_matrix(layer) for layer in lstm_layers(module)]
    from .cnn import weight_layers

    return [MaskedMatrix(((l.weight, l.mask),), l.weight[0].numel(), False) for l in weight_layers(module)]


def as_matrix(layer: MaskedLSTM) -> MaskedMatrix:
    return MaskedMatrix(((layer.weight_ih, layer.mask_ih), (layer.weight_hh, layer.mask_hh)), layer.input_size, True)


# --- schedule ----------------------------------------------------------------


def step_epochs(cfg: PruneConfig) -> list[int]:
    """The epochs whose end prunes: ``steps`` of them spread evenly over the ramp, the last at its end.

    ``steps=0`` (the default) prunes at the end of every ramp epoch.
    """
    if cfg.sparsity <= 0:
        return []
    n = cfg.steps or cfg.ramp_epochs
    return [cfg.start_epoch - 1 + -(-k * cfg.ramp_epochs // n) for k in range(1, n + 1)]


def target_sparsity(cfg: PruneConfig, epoch: int) -> float:
    """Sparsity to reach at the end of ``epoch`` (1-based): the ramp's value after the steps so far.

    After step k of n, x = k / n of the ramp is done; linear gives ``sparsity * x``,
    cubic ``sparsity * (1 - (1 - x)**3)`` (Zhu and Gupta 2017: prune hard while the
    network still has many redundant weights, gently near the end). The full target
    holds from the last step on.
    """
    steps = step_epochs(cfg)
    done = sum(e <= epoch for e in steps)
    if not done:
        return 0.0
    x = done / len(steps)
    return cfg.sparsity * (x if cfg.schedule == "linear" else 1.0 - (1.0 - x) ** 3)


def layer_sparsity(cfg: Config, epoch: int) -> float:
    """What every LSTM matrix is pruned to at the end of ``epoch``: the ramp's target, scaled by
    ``1 - 1/alpha`` with ``prune.alpha_scaled`` (the column-combining paper leaves combine-pruning
    the rest)."""
    s = target_sparsity(cfg.prune, epoch)
    return s * (1.0 - 1.0 / cfg.array.alpha) if cfg.prune.alpha_scaled else s


def final_mask_epoch(cfg: Config) -> int:
    """The last epoch whose end changes the masks (0 when nothing is scheduled).

    Only models evaluated after this epoch have the masks the hardware will
    get, so only they compete for the best checkpoint.
    """
    return max([*cfg.combine.epochs, *step_epochs(cfg.prune)], default=0)


# --- masks -------------------------------------------------------------------


def magnitude_mask(weight: torch.Tensor, mask: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``mask`` shrunk so that ``sparsity`` of all entries are off, dropping the smallest |weight| still on.

    Never grows the mask: when ``mask`` is already sparser, it is returned as is.
    Ties break deterministically (same input, same mask on every rank).
    """
    n = mask.numel()
    keep = n - int(round(sparsity * n))
    on = int(mask.sum())
    if on <= keep:
        return mask.clone()
    mag = (weight.detach().abs() * mask).flatten().to("cpu", torch.float64).numpy()
    mag[~mask.flatten().cpu().numpy()] = -1.0  # already pruned: below every live weight
    order = np.argsort(mag, kind="stable")  # ascending; ties by position
    new = np.ones(n, dtype=bool)
    new[order[: n - keep]] = False
    return torch.from_numpy(new.reshape(mask.shape)).to(mask.device) & mask


def bank_balanced_mask(weight: torch.Tensor, mask: torch.Tensor, sparsity: float, bank_size: int) -> torch.Tensor:
    """``mask`` shrunk so that in every row, every bank of ``bank_size`` consecutive columns keeps the
    same share ``1 - sparsity`` of its entries, the largest |weight| still on (bank-balanced sparsity,
    Cao et al., FPGA'19: one PE per bank finishes a row in the same number of steps). The last bank
    of a row may be shorter and keeps its own share. Never grows the mask; ties keep the lower column.
    """
    rows, cols = mask.shape
    nb = -(-cols // bank_size)
    pad = nb * bank_size - cols
    mag = (weight.detach().abs() * mask).to("cpu", torch.float64).numpy()
    mag[~mask.cpu().numpy()] = -1.0  # already pruned: below every live weight
    mag = np.pad(mag, ((0, 0), (0, pad)), constant_values=-2.0).reshape(rows, nb, bank_size)
    lengths = np.full(nb, bank_size)
    lengths[-1] -= pad
    keep = lengths - np.rint(sparsity * lengths).astype(np.int64)
    order = np.argsort(-mag, axis=2, kind="stable")  # descending; ties by position
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(bank_size), order.shape), axis=2)
    new = (rank < keep[None, :, None]).reshape(rows, nb * bank_size)[:, :cols]
    return torch.from_numpy(np.ascontiguousarray(new)).to(mask.device) & mask


@torch.no_grad()
def prune_layer(layer: MaskedLSTM | MaskedMatrix, sparsity: float, method: str = "magnitude",
                bank_size: int = 32) -> None:
    """Prune one matrix (an LSTM layer's [W_ih | W_hh] as one) toward ``sparsity``: by magnitude
    over the whole matrix, or bank-balanced (:func:`bank_balanced_mask`)."""
    mm = as_matrix(layer) if isinstance(layer, MaskedLSTM) else layer
    w, m = mm.weight(), mm.mask()
    mm.set_mask(magnitude_mask(w, m, sparsity) if method == "magnitude" else bank_balanced_mask(w, m, sparsity, bank_size))


@torch.no_grad()
def prune_matrices(mms: list[MaskedMatrix], sparsity: float, cfg: PruneConfig) -> None:
    """Prune every matrix toward ``sparsity``: each on its own (``prune.scope = "matrix"``), or by one
    magnitude threshold over all of them (``"global"``: ``sparsity`` of all their entries are off, and a
    matrix whose weights are large against the others' keeps more of them)."""
    if cfg.scope == "matrix":
        for mm in mms:
            prune_layer(mm, sparsity, cfg.method, cfg.bank_size)
        return
    masks = [mm.mask() for mm in mms]
    kept = magnitude_mask(torch.cat([mm.weight().flatten() for mm in mms]), torch.cat([m.flatten() for m in masks]),
                          sparsity)
    start = 0
    for mm, m in zip(mms, masks):
        mm.set_mask(kept[start:start + m.numel()].reshape(m.shape))
        start += m.numel()


@torch.no_grad()
def enforce_masks(model: torch.nn.Module) -> None:
    """Zero raw parameters where masked: call after every optimizer step and every mask change."""
    for mm in masked_matrices(model):
        for p, m in mm.pairs:
            p.mul_(m)


@torch.no_grad()
def mask_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Zero every per-parameter optimizer tensor (Adam moments, SGD momentum) at masked positions."""
    for mm in masked_matrices(model):
        for p, m in mm.pairs:
            for v in optimizer.state.get(p, {}).values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.mul_(m)


def l1_penalty(model: torch.nn.Module) -> torch.Tensor:
    """Sum of |w| over the prunable matrices (masked weights are zero and add nothing)."""
    return sum(p.abs().sum() for mm in masked_matrices(model) for p, _ in mm.pairs)


def nonzero_weights(model: torch.nn.Module) -> int:
    """Exact count of nonzero weights in the prunable matrices (LSTM: [W_ih | W_hh]; no biases,
    embedding or decoder)."""
    return sum(int(torch.count_nonzero(p * m)) for mm in masked_matrices(model) for p, m in mm.pairs)


def dense_cells(model: torch.nn.Module) -> int:
    """Array cells of the prunable matrices when nothing is combined (LSTM: sum of 4H x (I+H))."""
    return sum(p.numel() for mm in masked_matrices(model) for p, _ in mm.pairs)


def live_mask_entries(model: torch.nn.Module) -> int:
    """Entries still on in every mask: masks only shrink, so this fingerprints them."""
    return sum(int(m.sum()) for mm in masked_matrices(model) for _, m in mm.pairs)


# --- column combining ----------------------------------------------------------


def layer_matrix(layer: MaskedLSTM) -> np.ndarray:
    """The layer's masked [W_ih | W_hh] in the row order the array uses (unit-major, see combine.lstm_matrix)."""
    return as_matrix(layer).array_matrix()


def _combine(mm: MaskedMatrix, cfg: Config):
    from .pack import combine_matrix, row_block

    return combine_matrix(mm.array_matrix(), mm.in_x, cfg.array.alpha, cfg.combine.gamma, row_block(cfg))


@torch.no_grad()
def combine_model(model: torch.nn.Module, cfg: Config) -> dict:
    """Column-combine every prunable matrix (``ccflow.pack``) and AND the combine-pruning masks into its masks.

    Returns ``{matrix index: Packing}``. Callers must then zero the pruned
    weights (:func:`enforce_masks`) and their optimizer state.
    """
    packings = {}
    for k, mm in enumerate(masked_matrices(model)):
        packing = _combine(mm, cfg)
        mm.set_mask(mm.mask() & mm.from_array(packing.mask))
        packings[k] = packing
    return packings


@torch.no_grad()
def doomed_weights(model: torch.nn.Module, cfg: Config) -> list[tuple[torch.Tensor, ...]]:
    """Per matrix, one mask per piece (LSTM: ih, hh) of the live weights a combine now would cut: a
    trial combine (the same decision as :func:`combine_model`) whose masks are returned, not applied."""
    out = []
    for mm in masked_matrices(model):
        out.append(tuple(mm.pieces(mm.mask() & ~mm.from_array(_combine(mm, cfg).mask))))
    return out


@torch.no_grad()
def shrink_doomed(model: torch.nn.Module, doomed: list[tuple[torch.Tensor, ...]], decay: float) -> None:
    """Scale the weights :func:`doomed_weights` marked by ``1 - decay`` (after an optimizer step)."""
    for mm, pieces in zip(masked_matrices(model), doomed):
        for (p, _), d in zip(mm.pairs, pieces):
            p[d] *= 1.0 - decay


def soft_phase_starts(cfg: Config, epoch: int) -> bool:
    """Whether the end of ``epoch`` starts the soft phase of a combine (``combine.soft_epochs``)."""
    k = cfg.combine.soft_epochs
    return k > 0 and any(e - k == epoch for e in cfg.combine.epochs)


def apply_schedule(model: torch.nn.Module, cfg: Config, epoch: int, packings: dict | None) -> tuple[dict | None, bool]:
    """End-of-epoch mask updates: prune toward the ramp's target, then combine if scheduled.

    Returns the latest packings (unchanged when not combined) and whether the masks may have changed.
    """
    s = layer_sparsity(cfg, epoch)
    changed = False
    if s > layer_sparsity(cfg, epoch - 1):
        prune_matrices(masked_matrices(model), s, cfg.prune)
        changed = True
    if epoch in cfg.combine.epochs:
        packings = combine_model(model, cfg)
        changed = True
    if changed:
        enforce_masks(model)
    return packings, changed


def packing_stats(model: torch.nn.Module, packings: dict | None, array) -> tuple[int, int, float]:
    """(nonzero weights, packed cells, utilization) as the packing stage counts them (``ccflow.pack``):
    every matrix the array executes, decoder included, layers never combined packed conflict-free."""
    from .pack import float_model, pack_model

    packed = pack_model(float_model(model), array, packings)
    return packed.nnz, packed.packed_cells, packed.utilization
