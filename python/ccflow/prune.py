"""Masks in training: magnitude pruning on a ramp, column combining on a schedule.

Both act on each LSTM layer's ``[W_ih | W_hh]`` matrix (BRIEF section 4), the
matrix one array pass multiplies by ``[x; h]``. Masks only ever shrink: a
pruned weight stays zero for the rest of the run. Three mechanisms make that
hold exactly, whatever the optimizer does:

* the forward pass multiplies every weight by its mask (``MaskedLSTM``), so a
  masked weight gets no gradient and contributes nothing;
* :func:`enforce_masks` zeroes the raw parameters at masked positions after
  every optimizer step, so momentum and weight decay cannot move them;
* :func:`mask_optimizer_state` zeroes the optimizer's moments at positions a
  mask change just removed, so no stale momentum lingers in the state either.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import Config, PruneConfig
from .model import MaskedLSTM, lstm_layers


# --- schedule ----------------------------------------------------------------


def target_sparsity(cfg: PruneConfig, epoch: int) -> float:
    """Sparsity to reach at the end of ``epoch`` (1-based).

    Linear ramp: ``sparsity / ramp_epochs`` after epoch ``start_epoch``, the
    full target after epoch ``start_epoch + ramp_epochs - 1`` and later.
    """
    if cfg.sparsity <= 0 or epoch < cfg.start_epoch:
        return 0.0
    return cfg.sparsity * min(1.0, (epoch - cfg.start_epoch + 1) / cfg.ramp_epochs)


def final_mask_epoch(cfg: Config) -> int:
    """The last epoch whose end changes the masks (0 when nothing is scheduled).

    Only models evaluated after this epoch have the masks the hardware will
    get, so only they compete for the best checkpoint.
    """
    last = max(cfg.combine.epochs, default=0)
    if cfg.prune.sparsity > 0:
        last = max(last, cfg.prune.start_epoch + cfg.prune.ramp_epochs - 1)
    return last


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


@torch.no_grad()
def prune_layer(layer: MaskedLSTM, sparsity: float) -> None:
    """Magnitude-prune the layer's [W_ih | W_hh] as one matrix toward ``sparsity``."""
    w = torch.cat([layer.weight_ih, layer.weight_hh], dim=1)
    m = torch.cat([layer.mask_ih, layer.mask_hh], dim=1)
    new = magnitude_mask(w, m, sparsity)
    layer.mask_ih.copy_(new[:, : layer.input_size])
    layer.mask_hh.copy_(new[:, layer.input_size:])


@torch.no_grad()
def enforce_masks(model: torch.nn.Module) -> None:
    """Zero raw parameters where masked: call after every optimizer step and every mask change."""
    for layer in lstm_layers(model):
        layer.weight_ih.mul_(layer.mask_ih)
        layer.weight_hh.mul_(layer.mask_hh)


@torch.no_grad()
def mask_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Zero every per-parameter optimizer tensor (Adam moments, SGD momentum) at masked positions."""
    for layer in lstm_layers(model):
        for p, m in ((layer.weight_ih, layer.mask_ih), (layer.weight_hh, layer.mask_hh)):
            for v in optimizer.state.get(p, {}).values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.mul_(m)


def nonzero_weights(model: torch.nn.Module) -> int:
    """Exact count of nonzero weights in the LSTM matrices [W_ih | W_hh] (no biases, embedding or decoder)."""
    n = 0
    for layer in lstm_layers(model):
        w_ih, w_hh = layer.effective_weights()
        n += int(torch.count_nonzero(w_ih)) + int(torch.count_nonzero(w_hh))
    return n


def dense_cells(model: torch.nn.Module) -> int:
    """Array cells of the LSTM matrices when nothing is combined: sum of 4H x (I+H)."""
    return sum(l.weight_ih.numel() + l.weight_hh.numel() for l in lstm_layers(model))


# --- column combining ----------------------------------------------------------


def layer_matrix(layer: MaskedLSTM) -> np.ndarray:
    """The layer's masked [W_ih | W_hh] in the row order the array uses (unit-major, see combine.lstm_matrix)."""
    from .combine import lstm_matrix

    w_ih, w_hh = layer.effective_weights()
    return lstm_matrix(w_ih.detach().cpu().float().numpy(), w_hh.detach().cpu().float().numpy())


@torch.no_grad()
def combine_model(model: torch.nn.Module, cfg: Config) -> dict:
    """Column-combine every LSTM layer and AND the combine-pruning masks into the layer masks.

    Returns ``{layer index: Packing}``. Callers must then zero the pruned
    weights (:func:`enforce_masks`) and their optimizer state.
    """
    from .combine import combine_columns, lstm_unmatrix
    from .design import column_banks

    row_block = cfg.array.rows if cfg.combine.row_split else None
    packings = {}
    for l, layer in enumerate(lstm_layers(model)):
        # The bank rule of the hardware (design.column_banks): no two columns of a group in one act bank.
        banks = column_banks(layer.input_size, layer.input_size + layer.hidden_size, cfg.array.alpha)
        packing = combine_columns(layer_matrix(layer), cfg.array.alpha, gamma=cfg.combine.gamma, row_block=row_block,
                                  banks=banks)
        keep_ih, keep_hh = lstm_unmatrix(np.asarray(packing.mask, dtype=bool), layer.input_size)
        layer.mask_ih &= torch.from_numpy(np.ascontiguousarray(keep_ih)).to(layer.mask_ih.device)
        layer.mask_hh &= torch.from_numpy(np.ascontiguousarray(keep_hh)).to(layer.mask_hh.device)
        packings[l] = packing
    return packings


def apply_schedule(model: torch.nn.Module, cfg: Config, epoch: int, packings: dict | None) -> tuple[dict | None, bool]:
    """End-of-epoch mask updates: prune toward the ramp's target, then combine if scheduled.

    Returns the latest packings (unchanged when not combined) and whether the masks may have changed.
    """
    s = target_sparsity(cfg.prune, epoch)
    changed = False
    if s > target_sparsity(cfg.prune, epoch - 1):
        for layer in lstm_layers(model):
            prune_layer(layer, s)
        changed = True
    if epoch in cfg.combine.epochs:
        packings = combine_model(model, cfg)
        changed = True
    if changed:
        enforce_masks(model)
    return packings, changed


def packing_stats(model: torch.nn.Module, packings: dict | None) -> tuple[int, int, float]:
    """(nonzero weights, packed cells, utilization) over the LSTM matrices.

    Layers never combined count as dense cells. After a combine the groups
    stay valid as masks shrink further, so cells come from the latest packing
    and utilization uses today's exact nonzero count.
    """
    nnz = nonzero_weights(model)
    cells = 0
    for l, layer in enumerate(lstm_layers(model)):
        p = (packings or {}).get(l)
        cells += int(p.packed_cells) if p is not None else layer.weight_ih.numel() + layer.weight_hh.numel()
    return nnz, cells, nnz / max(cells, 1)
