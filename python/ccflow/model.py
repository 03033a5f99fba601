"""The AWD-LSTM character model with masks that pruning and column combining shrink.

Each LSTM layer keeps its raw parameters plus a boolean mask per matrix, in the
manner of ``torch.nn.utils.prune``: the forward pass runs the fused
``torch._VF.lstm`` kernel (the one ``nn.LSTM`` calls) on ``weight * mask``, and
weight drop (DropConnect) is applied to that product, so a masked weight is
zero whatever dropout draws. The trainer also zeroes the raw parameters at
masked positions after every optimizer step (:func:`ccflow.prune.enforce_masks`),
so optimizer momentum or weight decay can never bring one back and nonzero
counts read straight off the parameters.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import _VF, nn

from .config import ModelConfig

Hidden = list[tuple[torch.Tensor, torch.Tensor]]


class MaskedLSTM(nn.Module):
    """One LSTM layer (gate order i, f, g, o as in PyTorch) with weight masks and weight drop."""

    def __init__(self, input_size: int, hidden_size: int, wdrop: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size, self.wdrop = input_size, hidden_size, wdrop
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.register_buffer("mask_ih", torch.ones(4 * hidden_size, input_size, dtype=torch.bool))
        self.register_buffer("mask_hh", torch.ones(4 * hidden_size, hidden_size, dtype=torch.bool))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTM's default: every parameter uniform in +-1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def effective_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights the layer computes with in eval mode: masked, no dropout."""
        return self.weight_ih * self.mask_ih, self.weight_hh * self.mask_hh

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor]):
        """x [T, B, I], hx (h, c) each [1, B, H] -> (output [T, B, H], (h, c))."""
        w_ih, w_hh = self.effective_weights()
        if self.training and self.wdrop > 0:
            w_hh = F.dropout(w_hh, p=self.wdrop, training=True)
        with warnings.catch_warnings():
            # cuDNN asks for one flat weight buffer; ours are rebuilt every call by design.
            warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
            out, h, c = _VF.lstm(x, hx, (w_ih, w_hh, self.bias_ih, self.bias_hh),
                                 True, 1, 0.0, self.training, False, False)
        return out, (h, c)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, wdrop={self.wdrop}"


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout: one mask per sequence, shared over all time steps of x [T, B, D]."""
    if not training or p == 0:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


def embedded_dropout(embed: nn.Embedding, tokens: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole symbols (rows of the embedding) for the batch, as the AWD-LSTM toolkit does."""
    weight = embed.weight
    if training and p > 0:
        weight = weight * weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return F.embedding(tokens, weight)


class LSTMLanguageModel(nn.Module):
    """Embedding -> nlayers MaskedLSTM (emsize->nhid->...->emsize) -> decoder tied to the embedding."""

    def __init__(self, ntoken: int, cfg: ModelConfig):
        super().__init__()
        self.ntoken, self.cfg = ntoken, cfg
        self.encoder = nn.Embedding(ntoken, cfg.emsize)
        sizes = [cfg.emsize] + [cfg.nhid] * (cfg.nlayers - 1) + [cfg.emsize]
        self.layers = nn.ModuleList(MaskedLSTM(sizes[l], sizes[l + 1], cfg.wdrop) for l in range(cfg.nlayers))
        self.decoder = nn.Linear(cfg.emsize, ntoken)
        self.decoder.weight = self.encoder.weight  # tied: the last layer's width is emsize
        self.dropout_scale = 1.0  # the trainer's train.final_dropout, once the masks are final
        nn.init.uniform_(self.encoder.weight, -cfg.init_range, cfg.init_range)
        nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch: int) -> Hidden:
        w = self.encoder.weight
        return [(w.new_zeros(1, batch, l.hidden_size), w.new_zeros(1, batch, l.hidden_size)) for l in self.layers]

    def forward(self, tokens: torch.Tensor, hidden: Hidden):
        """tokens [T, B] -> logits [T, B, V], new hidden, extras for AR/TAR.

        extras["raw"] is the last layer's output before dropout (TAR penalises
        its changes over time), extras["dropped"] the same after the output
        dropout (AR penalises its magnitude), as in the toolkit.
        """
        c, s = self.cfg, self.dropout_scale
        x = embedded_dropout(self.encoder, tokens, s * c.dropoute, self.training)
        x = locked_dropout(x, s * c.dropouti, self.training)
        new_hidden = []
        for l, layer in enumerate(self.layers):
            raw, h = layer(x, hidden[l])
            new_hidden.append(h)
            last = l == len(self.layers) - 1
            x = locked_dropout(raw, s * (c.dropout if last else c.dropouth), self.training)
        return self.decoder(x), new_hidden, {"raw": raw, "dropped": x}


    def set_dropout_scale(self, scale: float) -> None:
        """Multiply every dropout, weight drop included, by ``scale`` (1 = the configured values)."""
        self.dropout_scale = scale
        for layer in self.layers:
            layer.wdrop = scale * self.cfg.wdrop


def detach_hidden(hidden: Hidden) -> Hidden:
    """Truncated BPTT: keep the state's values, cut the graph."""
    return [(h.detach(), c.detach()) for h, c in hidden]


def lstm_layers(model: nn.Module) -> list[MaskedLSTM]:
    """The MaskedLSTM layers of a model, possibly wrapped in DistributedDataParallel."""
    return list(getattr(model, "module", model).layers)
