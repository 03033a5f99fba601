"""Checkpoints: plain-data files that ``torch.load(weights_only=True)`` reads safely.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (no
pickled classes), so loading one from an untrusted place cannot run code:

=================  ==========================================================
key                value
=================  ==========================================================
format, version    ``"ccflow-checkpoint"``, 1
kind               ``"model"`` (model.pt) or ``"full"`` (checkpoint.pt)
config             ``Config.to_dict()`` with tuples as lists
vocab              list of symbols; id i is vocab[i]
model              the model's state_dict (weights, biases, bool masks)
packings           ``{"<layer>": Packing.to_dict()}`` or None if never combined
epoch, valid_bpc   the epoch these weights finished and their valid BPC
train              (full only) optimizer state, schedule position, RNG states,
                   best valid BPC, mid-epoch position after an interrupt
=================  ==========================================================

Files are written atomically (temporary file, fsync, ``os.replace``), so an
interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config, ConfigError
from .model import LSTMLanguageModel

FORMAT = "ccflow-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and the fix."""


@dataclass
class TrainedModel:
    config: Config
    vocab: tuple[str, ...]
    model: LSTMLanguageModel  # eval mode
    packings: dict | None  # {layer index: combine.Packing} from the last combine step
    epoch: int
    valid_bpc: float


# --- plain data --------------------------------------------------------------


def to_plain(obj):
    """Tuples to lists, numpy arrays to tensors, numpy scalars to Python numbers: what weights_only accepts."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)).clone()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def from_plain(obj):
    """Inverse of :func:`to_plain` for arrays (lists stay lists)."""
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    return obj


def packings_to_plain(packings: dict | None):
    return None if packings is None else {str(l): to_plain(p.to_dict()) for l, p in packings.items()}


def packings_from_plain(d: dict | None):
    if d is None:
        return None
    from .combine import Packing

    return {int(l): Packing.from_dict(from_plain(v)) for l, v in d.items()}


# --- files -------------------------------------------------------------------


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_checkpoint(path: str | Path, device="cpu") -> dict:
    """The raw checkpoint dict, loaded with weights_only=True and checked for our format."""
    path = Path(path)
    if path.is_dir():
        inside = [n for n in ("model.pt", "checkpoint.pt") if (path / n).is_file()]
        raise CheckpointError(f"{path} is a folder; give the checkpoint file inside it"
                              + (f": {path / inside[0]}" if inside else " (model.pt of a `ccflow train --out` folder)"))
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one first (python -m ccflow train --out DIR)")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises several types for foreign or damaged files; its advice is not ours
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(f"{path} holds pickled Python objects ({found.group(1)}) that could run code; "
                                  "ccflow never writes those and will not load them: use a model.pt or "
                                  "checkpoint.pt written by `ccflow train`") from None
        raise CheckpointError(f"{path} is not a ccflow checkpoint (not a readable PyTorch file: damaged, truncated "
                              "or another format); use a model.pt or checkpoint.pt written by `ccflow train`") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ccflow checkpoint (no format tag {FORMAT!r})")
    if ck.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ck.get('version')}, this ccflow reads {VERSION}; "
                              "re-train or use the matching ccflow version")
    kinds = {"kind": str, "config": dict, "vocab": list, "model": dict, "epoch": int, "valid_bpc": float}
    bad = [k for k, t in kinds.items() if not isinstance(ck.get(k), t)]
    if ck.get("kind") == "full" and not isinstance(ck.get("train"), dict):
        bad.append("train")
    if bad:
        raise CheckpointError(f"{path} is a damaged ccflow checkpoint (missing or wrong {', '.join(bad)}); "
                              "restore it or train again")
    return ck


def make_checkpoint(kind: str, cfg: Config, vocab, model, packings, epoch: int, valid_bpc: float,
                    train: dict | None = None, extra: dict | None = None) -> dict:
    """``vocab``: the symbols (a CNN: its class names); ``extra``: model facts the config does not
    hold (a CNN's ``input_shape``)."""
    module = getattr(model, "module", model)
    ck = {
        "format": FORMAT, "version": VERSION, "kind": kind,
        "config": to_plain(cfg.to_dict()), "vocab": list(vocab),
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "packings": packings_to_plain(packings),
        "epoch": int(epoch), "valid_bpc": float(valid_bpc),
    }
    if train is not None:
        ck["train"] = train
    ck.update(extra or {})
    return ck


# --- configuration checks ------------------------------------------------------


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def config_diff(saved: Config, expected: Config, prefixes=("",), ignore=()) -> list[str]:
    """``key: saved vs expected`` for every differing key under ``prefixes``, except ``ignore``."""
    a, b = _flat(to_plain(saved.to_dict())), _flat(to_plain(expected.to_dict()))
    keys = sorted(k for k in set(a) | set(b) if k.startswith(tuple(prefixes)) and k not in ignore)
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def check_compatible(path, saved: Config, expected: Config, prefixes=("model.", "data."), ignore=(),
                     saved_vocab=None, expected_vocab=None) -> None:
    diff = config_diff(saved, expected, prefixes, ignore)
    if saved_vocab is not None and expected_vocab is not None and tuple(saved_vocab) != tuple(expected_vocab):
        diff.append(f"vocab: {len(saved_vocab)} symbols vs {len(expected_vocab)}"
                    + (" (same size, different order)" if len(saved_vocab) == len(expected_vocab) else ""))
    if diff:
        raise CheckpointError(f"{path} was trained with a different configuration (checkpoint vs expected: "
                              f"{'; '.join(diff)}); use a checkpoint of this configuration or the matching config")


def load_model(path: str | Path, device="cpu", expect: Config | None = None,
               vocab: tuple[str, ...] | None = None) -> TrainedModel:
    """A trained model in eval mode on ``device``, from model.pt or checkpoint.pt.

    With ``expect`` (and ``vocab``), a checkpoint whose model shape, corpus or
    vocabulary differs is refused, naming the differing keys; when it holds
    packings, array.alpha and array.rows must match too (they shaped the packing).
    """
    ck = read_checkpoint(path, device)
    try:
        cfg = Config.from_dict(ck["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: stored configuration is not valid here ({e})") from None
    if expect is not None:
        prefixes = ("model.", "data.") + (("array.alpha", "array.rows") if ck.get("packings") else ())
        check_compatible(path, cfg, expect, prefixes, saved_vocab=ck["vocab"], expected_vocab=vocab)
    elif vocab is not None and tuple(vocab) != tuple(ck["vocab"]):
        check_compatible(path, cfg, cfg, saved_vocab=ck["vocab"], expected_vocab=vocab)
    if cfg.model.arch == "lstm":
        model = LSTMLanguageModel(len(ck["vocab"]), cfg.model)
    else:
        from .cnn_train import build_cnn

        if not isinstance(ck.get("input_shape"), list) or len(ck["input_shape"]) != 3:
            raise CheckpointError(f"{path}: a {cfg.model.arch} checkpoint without its input shape; train it again")
        model = build_cnn(cfg, in_shape=ck["input_shape"], classes=len(ck["vocab"]))
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the stored configuration ({first})") from None
    model.to(device).eval()
    return TrainedModel(config=cfg, vocab=tuple(ck["vocab"]), model=model,
                        packings=packings_from_plain(ck.get("packings")),
                        epoch=int(ck["epoch"]), valid_bpc=float(ck["valid_bpc"]))
