"""A CNN in fixed point on the MX array, and its integer golden model.

Quantization follows the LSTM's (``ccflow.quantize``) with the same pieces: the packing stage
decides every matrix's groups (:func:`ccflow.pack.pack_model`), ``quantize.row_exponents``
gives every row its weight exponent by ``formats.weight_section`` (a CNN has no gates: a gate
section is the whole matrix), and ``quantize._TileBuilder`` lays the groups into tiles. A
matrix's columns are its input vector: for a convolution the ``in * k * k`` pixels of one
output position's receptive field (channel-major, then kernel row, then column:
``cnn.im2col``), for a Linear the flattened map. Column j is read from input slot
``j mod alpha``, the bank rule the packing obeyed.

The golden model (:class:`CnnGolden`) executes what the array would, in the paper's dataflow:
a tile's weights stay in the array while the input vectors of every output position stream
through it, so each position's accumulator sees the tiles in the same order as an LSTM row
does, and the tile-by-tile arithmetic is :class:`ccflow.golden.ArrayModel`'s, shared with the
LSTM. Between the matrices: requantize (per-row shift, saturate to the activation format;
logits of the last layer in ``logit_frac``), ReLU (max with 0), 2 x 2 max pooling. Pixels enter
in the activation format: ``round(x * 2**act_frac)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .arrayconfig import ArrayConfig
from .cnn import FloatCnn, im2col, max_pool
from .design import MatrixInfo, MatrixTotals, load_design_files, save_design_files
from .fixedpoint import SaturationCounter
from .golden import ArrayModel
from .pack import PackError, pack_model
from .quantize import QuantizeError, _TileBuilder, row_exponents


@dataclass(frozen=True)
class IntStage:
    """One stage of the integer network; weight stages name their matrix (an index into ``matrices``)."""

    kind: str  # "conv", "fc", "relu", "pool", "flatten"
    matrix: int = -1
    kernel: int = 0
    padding: int = 0
    size: int = 0  # pool window


@dataclass(frozen=True)
class CnnLayer:
    """One weight layer as the hardware runs it: the map it reads, the positions it streams, what
    follows it (ReLU, 2 x 2 pooling) and the map it writes. A Linear layer is a 1 x 1 "convolution"
    over the flattened map (``cin`` = its inputs, one position), which the map's channel-major
    address order already is."""

    kind: str  # "conv" or "fc"
    matrix: int
    cin: int
    hin: int
    win: int
    kernel: int
    padding: int
    ho: int  # output positions ho x wo (before pooling)
    wo: int
    relu: bool
    pool: int  # 1 (none) or the pooling window
    last: bool  # the logits

    @property
    def positions(self) -> int:
        return self.ho * self.wo

    @property
    def in_words(self) -> int:
        return self.cin * self.hin * self.win

    @property
    def hp(self) -> int:
        return self.ho // self.pool

    @property
    def wp(self) -> int:
        return self.wo // self.pool

    def out_words(self, rows: int) -> int:
        return rows * self.hp * self.wp

    def tap(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Matrix column j of the layer as (dy, dx, offset): output position (oy, ox) reads pixel
        (oy + dy, ox + dx) of channel j // k^2, at map address oy * win + ox + offset, or zero
        outside the map (padding)."""
        k = self.kernel
        if self.kind == "fc":
            return np.zeros_like(j), np.zeros_like(j), j
        ci, ky, kx = j // (k * k), j // k % k, j % k
        dy, dx = ky - self.padding, kx - self.padding
        return dy, dx, ci * self.hin * self.win + dy * self.win + dx


def cnn_layers(in_shape, stages, matrices) -> tuple[CnnLayer, ...]:
    """The weight layers' geometry, walking the stage list from the input shape. Refuses what the
    hardware does not run: a stage other than ReLU or 2 x 2 pooling between weight layers, pooling
    before the ReLU, a ragged pooling edge."""
    c, h, w = in_shape
    layers: list[dict] = []
    for st in stages:
        if st.kind == "conv":
            k, pad = st.kernel, st.padding
            ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
            layers.append(dict(kind="conv", matrix=st.matrix, cin=c, hin=h, win=w, kernel=k, padding=pad, ho=ho,
                               wo=wo, relu=False, pool=1, last=False))
            c, h, w = matrices[st.matrix].rows, ho, wo
        elif st.kind == "fc":
            layers.append(dict(kind="fc", matrix=st.matrix, cin=c * h * w, hin=1, win=1, kernel=1, padding=0, ho=1,
                               wo=1, relu=False, pool=1, last=False))
            c, h, w = matrices[st.matrix].rows, 1, 1
        elif st.kind == "relu":
            if not layers or layers[-1]["pool"] != 1:
                raise QuantizeError("the CNN hardware runs ReLU right after a weight layer, before pooling")
            layers[-1]["relu"] = True
        elif st.kind == "pool":
            if not layers or layers[-1]["pool"] != 1 or st.size != 2 or h % 2 or w % 2:
                raise QuantizeError(f"the CNN hardware pools 2 x 2 once after a weight layer on an even map; "
                                    f"got a {st.size} x {st.size} pool of a {h} x {w} map")
            layers[-1]["pool"] = 2
            h, w = h // 2, w // 2
        # flatten: the map's channel-major order already is the flattened vector
    layers[-1]["last"] = True
    return tuple(CnnLayer(**d) for d in layers)


@dataclass(frozen=True)
class CnnDesign(MatrixTotals):
    """What the quantizer produces for a CNN: tiles and row blocks of every matrix (as ``Design``)
    plus the stage list that says what happens between them."""

    array: ArrayConfig
    in_shape: tuple[int, int, int]
    classes: int
    act_size: int  # the longest input vector (the array's input buffer)
    matrices: tuple[MatrixInfo, ...]
    stages: tuple[IntStage, ...]
    tile_weight: np.ndarray
    tile_sel: np.ndarray
    tile_addr: np.ndarray
    tile_block: np.ndarray
    tile_first: np.ndarray
    tile_last: np.ndarray
    tile_split: np.ndarray
    block_bias: np.ndarray
    block_shift: np.ndarray
    quant_saturations: int = 0

    _ARRAYS = ("tile_weight", "tile_sel", "tile_addr", "tile_block", "tile_first", "tile_last", "tile_split",
               "block_bias", "block_shift")

    @property
    def n_tiles(self) -> int:
        return int(self.tile_weight.shape[0])

    @property
    def n_blocks(self) -> int:
        return int(self.block_bias.shape[0])

    @property
    def layers(self) -> tuple[CnnLayer, ...]:
        return cnn_layers(self.in_shape, self.stages, self.matrices)

    def save(self, directory: str | Path) -> None:
        """``array_config.json`` + ``design.npz`` (``"kind": "cnn"`` in its meta), as ``Design.save``."""
        save_design_files(self, directory, {"kind": "cnn", "in_shape": list(self.in_shape), "classes": self.classes,
                                            "act_size": self.act_size, "quant_saturations": self.quant_saturations,
                                            "stages": [asdict(s) for s in self.stages]})

    @classmethod
    def load(cls, directory: str | Path) -> "CnnDesign":
        array, meta, arrays = load_design_files(directory, "cnn", cls._ARRAYS)
        meta.update(in_shape=tuple(meta["in_shape"]), stages=tuple(IntStage(**s) for s in meta["stages"]))
        return cls(array=array, **meta, **arrays)



def quantize_cnn(model: FloatCnn, array: ArrayConfig, packings: dict | None = None) -> CnnDesign:
    """Lay a (batch-norm folded) CNN out on the array in fixed point; see the module docstring."""
    fmt = array.formats
    sat = SaturationCounter()
    try:
        packed = pack_model(model, array, packings)
    except PackError as e:
        raise QuantizeError(str(e)) from None
    weights = model.weight_stages
    n = len(weights)
    out_fracs = [fmt.act_frac] * (n - 1) + [fmt.logit_frac]
    exponents = row_exponents([mp.matrix for mp in packed.matrices], [s.bias for s in weights], out_fracs, [1] * n,
                              array)
    builder = _TileBuilder(array)
    matrices = [builder.add(mp, s.bias, e, f, sat, in_base=0, hidden=0, out_base=-1, cell_base=-1)
                for mp, s, e, f in zip(packed.matrices, weights, exponents, out_fracs)]
    stages, k = [], 0
    for s in model.stages:
        if s.kind in ("conv", "fc"):
            stages.append(IntStage(s.kind, matrix=k, kernel=s.weight.shape[-1] if s.kind == "conv" else 0,
                                   padding=s.padding))
            k += 1
        else:
            stages.append(IntStage(s.kind, size=s.size))
    act_size = max(max(m.in_size for m in matrices), array.alpha)  # an unused input slot reads address < alpha
    cnn_layers(model.in_shape, stages, matrices)  # refuses a network the hardware cannot run
    return CnnDesign(array=array, in_shape=tuple(model.in_shape), classes=model.classes, act_size=act_size,
                     matrices=tuple(matrices), stages=tuple(stages), quant_saturations=sat.total, **builder.arrays())


class CnnGolden:
    """The integer CNN, as the array computes it; vectorised over a batch of images."""

    def __init__(self, design: CnnDesign) -> None:
        self.design = design
        self.sat = SaturationCounter()
        self.array = ArrayModel(design, self.sat)

    def input(self, images: np.ndarray) -> np.ndarray:
        """Pixels [N, C, H, W] in [0, 1] -> the activation format."""
        fmt = self.design.array.formats
        return self.sat.saturate(np.rint(np.asarray(images, np.float64) * 2.0 ** fmt.act_frac).astype(np.int64),
                                 fmt.act_bits, "input")

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits [N, classes] (int, Q.logit_frac) of a batch of images."""
        d = self.design
        x = self.input(images)
        for st in d.stages:
            if st.kind == "conv":
                n, _, h, w = x.shape
                vectors = im2col(x, st.kernel, st.padding)  # [N, positions, in * k * k]
                m = d.matrices[st.matrix]
                y = self._matrix(m, vectors.reshape(-1, vectors.shape[-1]), "conv output")
                ho, wo = h + 2 * st.padding - st.kernel + 1, w + 2 * st.padding - st.kernel + 1
                x = y.reshape(n, ho * wo, m.rows).transpose(0, 2, 1).reshape(n, m.rows, ho, wo)
            elif st.kind == "fc":
                m = d.matrices[st.matrix]
                x = self._matrix(m, x, "logits" if st.matrix == len(d.matrices) - 1 else "fc output")
            elif st.kind == "relu":
                x = np.maximum(x, 0)
            elif st.kind == "pool":
                x = max_pool(x, st.size)
            else:
                x = x.reshape(x.shape[0], -1)
        return x

    def _matrix(self, m: MatrixInfo, vectors: np.ndarray, site: str) -> np.ndarray:
        act = np.zeros((len(vectors), self.design.act_size), dtype=np.int64)
        act[:, : vectors.shape[1]] = vectors
        return self.array.requantize(m, self.array.accumulate(m, act), site)[:, : m.rows]


def fixed_point_accuracy(design: CnnDesign, images: np.ndarray, labels: np.ndarray, batch: int = 64) -> float:
    """Accuracy of the integer model on (images, labels); ties in the logits go to the lowest class."""
    golden = CnnGolden(design)
    right = 0
    for i in range(0, len(labels), batch):
        right += int((golden.run(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
    return right / len(labels)
