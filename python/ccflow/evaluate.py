"""Bits per character, measured the AWD-LSTM way.

The split is cut into ``batch_size`` parallel streams (``batchify``) and read
in chunks of ``bptt`` tokens, carrying the hidden state from chunk to chunk,
so every token but the first of each stream is predicted with its full
history. BPC is the mean cross-entropy over all predicted tokens in nats / ln 2
(the toolkit divides the summed loss by the stream length, one token too many
per stream; we divide by the tokens actually predicted).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .corpus import load_corpus
from .corpus import batchify as corpus_batchify


def batchify(data, batch_size: int, device="cpu") -> torch.Tensor:
    """``corpus.batchify`` as a long tensor on ``device``."""
    return torch.as_tensor(corpus_batchify(data, batch_size), dtype=torch.long).contiguous().to(device)


@torch.no_grad()
def evaluate(model, data, batch_size: int, bptt: int, device="cpu") -> float:
    """BPC of ``model`` on token ids ``data`` (eval mode: no dropout); the model's mode is restored after."""
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    src = batchify(data, batch_size, device)
    hidden = model.init_hidden(batch_size)
    total = torch.zeros((), dtype=torch.float64, device=src.device)
    count = 0
    for i in range(0, src.size(0) - 1, bptt):
        n = min(bptt, src.size(0) - 1 - i)
        logits, hidden, _ = model(src[i:i + n], hidden)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), src[i + 1:i + 1 + n].reshape(-1),
                               reduction="sum")
        total += loss.double()
        count += n * batch_size
    model.train(was_training)
    return total.item() / count / math.log(2)


def evaluate_checkpoint(path: str | Path, split: str = "test", corpus_spec: str | None = None,
                        device: str | None = None, threads: int | None = None) -> float:
    """BPC of a saved model on a split of its corpus (or ``corpus_spec``), tokenized with the model's vocabulary.

    Uses the configuration's ``test_batch_size`` for test and ``eval_batch_size`` otherwise, as the toolkit does.
    """
    from .checkpoint import load_model
    from .runtime import choose_threads, resolve_device, set_threads

    choose_threads(threads)  # a bad --threads fails before any work
    device = resolve_device(device)
    tm = load_model(path, device)
    set_threads(threads, sum(p.numel() for p in tm.model.parameters()))
    corpus = load_corpus(corpus_spec or tm.config.data.corpus, vocab=tm.vocab)
    t = tm.config.train
    batch = t.test_batch_size if split == "test" else t.eval_batch_size
    return evaluate(tm.model, corpus.split(split), batch, t.bptt, device)
