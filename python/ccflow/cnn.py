"""Convolutional networks for column combining: the paper's own task (LeNet-5, a small CIFAR net).

A network is a plain sequence of stages, so that every weight layer is one matrix the MX array
multiplies by one input vector (BRIEF section 4): a Conv2d presents out x (in * kh * kw) (one
array column per input pixel of a filter, ``combine.conv2d_matrix``), a Linear its W. Between
them sit ReLU, 2x2 max pooling and batch norm; batch norm is folded into the preceding
convolution before quantization (:func:`fold`), as the column-combining paper does, so the
hardware never sees it.

Masks work as in the LSTM (``torch.nn.utils.prune``'s one mechanism): every weight layer keeps a
boolean ``mask`` buffer of the weight's shape and computes with ``weight * mask``.

Architectures (``SPECS``), written as stage lists so the layer shapes are data:

* ``lenet5``: conv 5x5 x6 (padding 2), pool, conv 5x5 x16, pool, fc 120, fc 84, fc classes -- the
  paper's MNIST network. The second convolution is padded too when its input map is smaller than
  8 x 8 (after the built-in 8 x 8 digits' first pooling), so the network still ends on a 2 x 2 map.
* ``vgg-small``: conv 3x3 x32 x2, pool, x64 x2, pool, x128 x2, pool, fc classes -- a plain
  CIFAR-style network. Chosen over ResNet-20 because it needs no residual adds: every layer is
  one matrix-vector product per output position on the same array, and its 3 x 3 convolutions
  have the in * 9 wide matrices column combining packs best.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (kind, argument): ("conv", (out channels, kernel)), ("pool", 2), ("fc", out features; 0 = classes)
SPECS: dict[str, tuple[tuple[str, object], ...]] = {
    "lenet5": (("conv", (6, 5)), ("pool", 2), ("conv", (16, 5)), ("pool", 2), ("fc", 120), ("fc", 84), ("fc", 0)),
    "vgg-small": (("conv", (32, 3)), ("conv", (32, 3)), ("pool", 2), ("conv", (64, 3)), ("conv", (64, 3)),
                  ("pool", 2), ("conv", (128, 3)), ("conv", (128, 3)), ("pool", 2), ("fc", 0)),
}


class CnnError(ValueError):
    """An architecture that cannot take the given input; the message says why and the fix."""


class MaskedConv2d(nn.Conv2d):
    """Conv2d (stride 1, no dilation or groups) that computes with ``weight * mask``."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int) -> None:
        super().__init__(cin, cout, kernel, padding=padding)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)


class MaskedLinear(nn.Linear):
    """Linear that computes with ``weight * mask``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class Cnn(nn.Module):
    """A stage list (``SPECS``) built for an input shape: weight layers, ReLU, pooling, batch norm."""

    def __init__(self, arch: str, in_shape: tuple[int, int, int], classes: int, batchnorm: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if arch not in SPECS:
            raise CnnError(f"model.arch={arch!r} is not known; choose one of {', '.join(SPECS)}")
        self.arch, self.in_shape, self.classes = arch, tuple(in_shape), classes
        c, h, w = in_shape
        stages: list[nn.Module] = []
        spec = SPECS[arch]
        last_fc = max(i for i, (kind, _) in enumerate(spec) if kind == "fc")
        for i, (kind, arg) in enumerate(spec):
            if kind == "conv":
                out, k = arg
                pad = k // 2 if (arch != "lenet5" or not stages or min(h, w) < k + 3) else 0
                stages.append(MaskedConv2d(c, out, k, pad))
                h, w, c = h + 2 * pad - k + 1, w + 2 * pad - k + 1, out
                if batchnorm:
                    stages.append(nn.BatchNorm2d(c))
                stages.append(nn.ReLU())
            elif kind == "pool":
                if h < arg or w < arg:
                    raise CnnError(f"{arch}: a {h} x {w} map cannot be pooled {arg} x {arg}; the input "
                                   f"{in_shape[1]} x {in_shape[2]} is too small for this network")
                stages.append(nn.MaxPool2d(arg))
                h, w = h // arg, w // arg
            else:
                if not any(isinstance(s, nn.Flatten) for s in stages):
                    stages.append(nn.Flatten())
                    c, h, w = c * h * w, 1, 1
                out = arg or classes
                if i != last_fc and dropout > 0:
                    stages.append(nn.Dropout(dropout))
                stages.append(MaskedLinear(c, out))
                c = out
                if i != last_fc:
                    stages.append(nn.ReLU())
            if h < 1 or w < 1:
                raise CnnError(f"{arch}: the input {in_shape[1]} x {in_shape[2]} is too small for this network")
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The masked weight layers, in execution order (possibly inside DistributedDataParallel)."""
    return [m for m in getattr(model, "module", model).modules() if isinstance(m, (MaskedConv2d, MaskedLinear))]


# --- the float description the quantizer and golden model read ------------------------------------


@dataclass(frozen=True)
class FloatStage:
    """One stage of an inference-time network in numpy: batch norm folded away, masks applied."""

    kind: str  # "conv", "fc", "relu", "pool", "flatten"
    weight: np.ndarray | None = None  # conv: [out, in, k, k]; fc: [out, in]
    bias: np.ndarray | None = None
    padding: int = 0
    size: int = 0  # pool window

    @property
    def matrix(self) -> np.ndarray:
        """The matrix the array multiplies: out x (in * kh * kw), or the fc weight."""
        return self.weight.reshape(self.weight.shape[0], -1)


@dataclass(frozen=True)
class FloatCnn:
    in_shape: tuple[int, int, int]
    classes: int
    stages: tuple[FloatStage, ...]

    @classmethod
    def from_torch(cls, model: Cnn) -> "FloatCnn":
        return cls(model.in_shape, model.classes, fold(model))

    def combined(self, alpha: int, gamma: float, row_block: int | None) -> tuple["FloatCnn", dict]:
        """Column-combine every weight layer and apply the combine-pruning masks (no retraining)."""
        from .pack import combine_matrix

        packings, stages, k = {}, [], 0
        for s in self.stages:
            if s.kind in ("conv", "fc"):
                p = combine_matrix(s.matrix, s.matrix.shape[1], alpha, gamma, row_block)
                packings[k] = p
                k += 1
                s = replace(s, weight=s.weight * np.asarray(p.mask, dtype=bool).reshape(s.weight.shape))
            stages.append(s)
        return FloatCnn(self.in_shape, self.classes, tuple(stages)), packings

    @property
    def weight_stages(self) -> list[FloatStage]:
        return [s for s in self.stages if s.kind in ("conv", "fc")]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Float64 inference on images [N, C, H, W] -> logits [N, classes] (the reference the integer
        golden model is checked against)."""
        for s in self.stages:
            if s.kind == "conv":
                x = conv2d(x, s.weight, s.bias, s.padding)
            elif s.kind == "fc":
                x = x @ s.weight.T + s.bias
            elif s.kind == "relu":
                x = np.maximum(x, 0.0)
            elif s.kind == "pool":
                x = max_pool(x, s.size)
            else:
                x = x.reshape(x.shape[0], -1)
        return x


@torch.no_grad()
def fold(model: Cnn) -> tuple[FloatStage, ...]:
    """The eval-mode network with every BatchNorm2d folded into the convolution before it.

    BN(conv(x)) = g * (W x + b - mean) / sqrt(var + eps) + beta: a convolution with weights
    ``W * s`` and bias ``(b - mean) * s + beta``, s = g / sqrt(var + eps) per output channel.
    A masked weight stays exactly zero (0 * s), so folding keeps the packing.
    """
    out: list[FloatStage] = []
    for m in model.stages:
        if isinstance(m, MaskedConv2d):
            out.append(FloatStage("conv", _np(m.effective_weight()), _np(m.bias), padding=m.padding[0]))
        elif isinstance(m, nn.BatchNorm2d):
            prev = out[-1]
            if prev.kind != "conv":
                raise CnnError("batch norm must follow a convolution to be folded")
            s = _np(m.weight) / np.sqrt(_np(m.running_var) + m.eps)
            out[-1] = FloatStage("conv", prev.weight * s[:, None, None, None],
                                 (prev.bias - _np(m.running_mean)) * s + _np(m.bias), padding=prev.padding)
        elif isinstance(m, MaskedLinear):
            out.append(FloatStage("fc", _np(m.effective_weight()), _np(m.bias)))
        elif isinstance(m, nn.ReLU):
            out.append(FloatStage("relu"))
        elif isinstance(m, nn.MaxPool2d):
            out.append(FloatStage("pool", size=int(m.kernel_size)))
        elif isinstance(m, nn.Flatten):
            out.append(FloatStage("flatten"))
        elif not isinstance(m, nn.Dropout):  # dropout is the identity at inference
            raise CnnError(f"cannot fold stage {type(m).__name__}")
    return tuple(out)


def max_pool(x: np.ndarray, k: int) -> np.ndarray:
    """k x k max pooling, stride k, of [N, C, H, W] (a ragged edge is dropped, as in torch)."""
    n, c, h, w = x.shape
    return x[:, :, : h // k * k, : w // k * k].reshape(n, c, h // k, k, w // k, k).max(axis=(3, 5))


def im2col(x: np.ndarray, k: int, padding: int) -> np.ndarray:
    """[N, C, H, W] -> [N, H' * W', C * k * k]: the input vector of every output position, in the
    column order of the conv matrix (channel-major, then kernel row, then kernel column)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # [N, C, ho, wo, k, k]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n, ho * wo, c * k * k)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, padding: int) -> np.ndarray:
    """Stride-1 convolution as the array computes it: the conv matrix times every input vector."""
    n, _, h, w = x.shape
    out, _, k, _ = weight.shape
    cols = im2col(x, k, padding)
    y = cols @ weight.reshape(out, -1).T + bias  # [N, positions, out]
    ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    return y.transpose(0, 2, 1).reshape(n, out, ho, wo)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()
