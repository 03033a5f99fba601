"""Run configuration: TOML presets in ``configs/`` plus ``key=value`` overrides.

A preset names every hyper-parameter of a run. ``load_config("small",
["model.nhid=512", "train.epochs=3"])`` returns a frozen :class:`Config`; an
unknown key, a wrong type or an impossible value raises :class:`ConfigError`
naming the key, so a typo in a sweep script fails at once instead of silently
training the default.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from .arrayconfig import ArrayConfig, ConfigError, NumberFormats, _check

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class DataConfig:
    # "builtin" (stdlib sources), "ptbc-small", a directory with train/valid/test.txt,
    # a prepared enwik8 directory, or a plain text file. For a CNN (model.arch other than
    # "lstm") the image set: "digits" (built in), an MNIST IDX or CIFAR-10 binary folder.
    corpus: str = "builtin"


MODEL_ARCHS = ("lstm", "lenet5", "vgg-small")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "lstm"  # the character LSTM, or a CNN of ccflow.cnn.SPECS (lenet5, vgg-small)
    batchnorm: bool = True  # CNN only: batch norm after every convolution (folded before quantization)
    emsize: int = 64
    nhid: int = 128
    nlayers: int = 3
    dropout: float = 0.1  # locked dropout on the last layer's output (CNN: dropout before each hidden Linear)
    dropouth: float = 0.1  # locked dropout between LSTM layers
    dropouti: float = 0.1  # locked dropout on the embedding output
    dropoute: float = 0.0  # embedding dropout (whole rows of the embedding)
    wdrop: float = 0.0  # DropConnect on hidden-to-hidden weights
    # Embedding (= tied decoder) init U(-r, r). The toolkit's 0.1 suits emsize >= 200; a small
    # embedding starts with near-zero logits and sits on a plateau for hundreds of steps.
    init_range: float = 0.1

    def __post_init__(self) -> None:
        _check(self.arch in MODEL_ARCHS, f"model.arch={self.arch!r} must be one of {', '.join(MODEL_ARCHS)}")
        _check(self.emsize >= 1 and self.nhid >= 1, "model.emsize and model.nhid must be >= 1")
        _check(self.nlayers >= 1, f"model.nlayers={self.nlayers} must be >= 1")
        for name in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"model.{name}={v} must be in [0, 1)")
        _check(self.init_range > 0, f"model.init_range={self.init_range} must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    eval_batch_size: int = 10
    test_batch_size: int = 1
    bptt: int = 64
    lr: float = 2e-3
    optimizer: str = "adam"  # "adam" or "sgd"
    wdecay: float = 1.2e-6
    clip: float = 0.25
    ar: float = 0.0  # activation regularisation (AWD-LSTM "alpha")
    tar: float = 0.0  # temporal activation regularisation (AWD-LSTM "beta")
    when: tuple[int, ...] = ()  # epochs after which lr is divided by 10
    seed: int = 1111
    log_interval: int = 100
    max_batches: int = 0  # >0 caps batches per epoch (quick runs, tests)
    distill: str = ""  # a teacher's model.pt: knowledge distillation (Hinton et al. 2015); "" = none
    distill_weight: float = 0.5  # loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || student) at T
    distill_temp: float = 1.0  # T: softens both distributions
    # Every dropout (weight drop included) times this in the epochs after the last mask change (a dense run: all
    # epochs). A model pruned hard underfits once its masks are final, while the dense one it started as overfit.
    final_dropout: float = 1.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "test_batch_size", "log_interval"):
            _check(getattr(self, name) >= 1, f"train.{name}={getattr(self, name)} must be >= 1")
        _check(self.bptt >= 2, f"train.bptt={self.bptt} must be >= 2")
        _check(self.lr > 0, f"train.lr={self.lr} must be > 0")
        _check(self.optimizer in ("adam", "sgd"), f"train.optimizer={self.optimizer!r} must be 'adam' or 'sgd'")
        for name in ("clip", "wdecay", "ar", "tar", "max_batches"):
            _check(getattr(self, name) >= 0, f"train.{name}={getattr(self, name)} must be >= 0")
        _check(all(e >= 1 for e in self.when), f"train.when={list(self.when)} must list epochs >= 1")
        _check(0.0 <= self.distill_weight <= 1.0, f"train.distill_weight={self.distill_weight} must be in [0, 1]")
        _check(self.distill_temp > 0, f"train.distill_temp={self.distill_temp} must be > 0")
        _check(0.0 <= self.final_dropout <= 1.0, f"train.final_dropout={self.final_dropout} must be in [0, 1]")
        _check(0 <= self.seed < 2**32, f"train.seed={self.seed} must be in 0..2**32-1 (numpy's seed range)")


@dataclass(frozen=True)
class PruneConfig:
    """Pruning toward ``sparsity`` in steps at epoch ends over a ramp (docs/training.md)."""

    sparsity: float = 0.0  # fraction of each LSTM matrix (of all of them with scope "global") pruned at the ramp end
    start_epoch: int = 1  # first epoch after which pruning applies (1 = after the first epoch)
    ramp_epochs: int = 1  # epochs to reach the target
    schedule: str = "linear"  # "linear" or "cubic" (Zhu and Gupta 2017: s * (1 - (1 - x)^3), fast early)
    steps: int = 0  # pruning steps spread evenly over the ramp; 0 = one at the end of every ramp epoch
    method: str = "magnitude"  # "magnitude" (whole matrix) or "bank_balanced" (Cao et al. FPGA'19)
    bank_size: int = 32  # bank_balanced: columns per bank; every bank of every row keeps the same share
    # "matrix": every matrix pruned to the sparsity; "global": one magnitude threshold over all of them, so
    # the total is the sparsity and each matrix keeps the weights that are large against the others'
    scope: str = "matrix"
    alpha_scaled: bool = False  # prune to sparsity * (1 - 1/array.alpha) (the column-combining paper's recipe)
    l1: float = 0.0  # L1 penalty on the LSTM weights until the masks are final (the paper's recipe)

    def __post_init__(self) -> None:
        _check(0.0 <= self.sparsity < 1.0, f"prune.sparsity={self.sparsity} must be in [0, 1)")
        _check(self.start_epoch >= 1, f"prune.start_epoch={self.start_epoch} must be >= 1")
        _check(self.ramp_epochs >= 1, f"prune.ramp_epochs={self.ramp_epochs} must be >= 1")
        _check(self.schedule in ("linear", "cubic"), f"prune.schedule={self.schedule!r} must be 'linear' or 'cubic'")
        _check(0 <= self.steps <= self.ramp_epochs,
               f"prune.steps={self.steps} must be in 0..prune.ramp_epochs={self.ramp_epochs} (one step per epoch "
               "end at most; 0 = every ramp epoch)")
        _check(self.method in ("magnitude", "bank_balanced"),
               f"prune.method={self.method!r} must be 'magnitude' or 'bank_balanced'")
        _check(self.bank_size >= 1, f"prune.bank_size={self.bank_size} must be >= 1")
        _check(self.scope in ("matrix", "global"), f"prune.scope={self.scope!r} must be 'matrix' or 'global'")
        _check(self.scope == "matrix" or self.method == "magnitude",
               f"prune.scope={self.scope!r} needs prune.method='magnitude' (bank-balanced keeps a share of every "
               "bank of every row, a per-row rule); set prune.scope='matrix' for bank-balanced pruning")
        _check(self.l1 >= 0, f"prune.l1={self.l1} must be >= 0")


@dataclass(frozen=True)
class CombineConfig:
    """Column combining of the LSTM matrices at the end of the listed epochs."""

    epochs: tuple[int, ...] = ()  # combine after these epochs (1-based); () = never
    gamma: float = 0.0  # conflicts per row allowed in a group (0 = conflict-free CC)
    row_split: bool = True  # combine separately in each block of array.rows rows
    allow_first_epoch: bool = False  # early training drops BPC fastest; combining after epoch 1 is opt-in
    # Combine-aware pruning: soft_epochs before each combine, a trial combine marks the weights that will
    # lose their row in their group, and every optimizer step until the combine scales them by
    # (1 - soft_decay), so the network learns to do without them before they are cut. 0 = off.
    soft_epochs: int = 0
    soft_decay: float = 0.05

    def __post_init__(self) -> None:
        _check(self.gamma >= 0, f"combine.gamma={self.gamma} must be >= 0")
        _check(self.soft_epochs >= 0, f"combine.soft_epochs={self.soft_epochs} must be >= 0")
        _check(0.0 < self.soft_decay <= 1.0, f"combine.soft_decay={self.soft_decay} must be in (0, 1]")
        _check(all(e >= 1 for e in self.epochs), f"combine.epochs={self.epochs} must all be >= 1")
        _check(1 not in self.epochs or self.allow_first_epoch,
               f"combine.epochs={list(self.epochs)} combines after epoch 1, while BPC still drops fastest; "
               "start at epoch 2 or later, or set combine.allow_first_epoch=true to do it anyway")


@dataclass(frozen=True)
class Config:
    name: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    array: ArrayConfig = field(default_factory=ArrayConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return _build(cls, d, "")

    def replace(self, overrides: typing.Iterable[str]) -> "Config":
        d = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            _check(bool(sep) and bool(key.strip()), f"override {item!r} must look like section.key=value")
            _set_dotted(d, key.strip(), _parse_value(raw.strip()))
        return Config.from_dict(d)


def preset_path(name_or_path: str) -> Path:
    """A preset name (``tiny``) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        _check(p.is_file(), f"config file {p} does not exist; give a preset name (tiny, small, ...) or a .toml path")
        return p
    p = CONFIG_DIR / f"{name_or_path}.toml"
    known = sorted(q.stem for q in CONFIG_DIR.glob("*.toml"))
    _check(p.is_file(), f"unknown preset {name_or_path!r}; known presets: {', '.join(known)} (or give a .toml path)")
    return p


def load_config(name_or_path: str = "tiny", overrides: typing.Iterable[str] = ()) -> Config:
    path = preset_path(name_or_path)
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    d.setdefault("name", path.stem)
    return Config.from_dict(d).replace(overrides)


# --- helpers -----------------------------------------------------------------


def _build(cls, d: dict, where: str):
    _check(isinstance(d, dict), f"config section {where or '<top>'} must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    _check(not unknown, f"unknown config key(s) {', '.join(where + k for k in sorted(unknown))}; "
                        f"known in {where or 'top level'}: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


def _coerce(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return _build(hint, value, key + ".")
    origin = typing.get_origin(hint)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        _check(isinstance(value, (list, tuple)), f"{key} must be a list, got {value!r}")
        return tuple(_coerce(inner, v, key) for v in value)
    if hint is bool:
        _check(isinstance(value, bool), f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{key} must be a number, got {value!r}")
        _check(math.isfinite(value), f"{key}={value} must be a finite number")  # every float setting, here once
        return float(value)
    if hint is str:
        _check(isinstance(value, str), f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")


def _parse_value(raw: str):
    """TOML literal if it parses (3, 1e-3, true, [2, 3]), else the bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    node = d
    for i, part in enumerate(parts[:-1]):
        _check(isinstance(node.get(part), dict), f"unknown config section {'.'.join(parts[:i + 1])!r} in override {key}")
        node = node[part]
    _check(parts[-1] in node, f"unknown config key {key!r}; known in this section: {', '.join(sorted(node))}")
    node[parts[-1]] = value


__all__ = [
    "ArrayConfig", "CombineConfig", "Config", "ConfigError", "DataConfig", "ModelConfig",
    "NumberFormats", "PruneConfig", "TrainConfig", "load_config", "preset_path",
]
