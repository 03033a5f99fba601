"""Presets, overrides and the errors a typo must produce."""

import pytest

from ccflow.config import ArrayConfig, Config, ConfigError, load_config


def test_every_preset_loads():
    for name in ("tiny", "small", "small-cpcc", "small-wide", "ptbc-paper", "enwik8-paper"):
        assert load_config(name).name == name


def test_paper_presets_are_the_toolkit_commands():
    p = load_config("ptbc-paper")
    assert (p.model.emsize, p.model.nhid, p.train.bptt, p.train.batch_size, p.train.lr) == (200, 1000, 150, 128, 2e-3)
    assert (p.model.dropouth, p.model.dropouti, p.model.dropout, p.model.dropoute, p.model.wdrop) == (0.25, 0.1, 0.1, 0, 0.5)
    assert (p.train.wdecay, p.train.epochs, p.train.when) == (1.2e-6, 500, (300, 400))
    e = load_config("enwik8-paper")
    assert (e.model.emsize, e.model.nhid, e.train.bptt, e.train.batch_size, e.train.lr) == (400, 1840, 200, 128, 1e-3)
    assert (e.model.dropouth, e.model.dropouti, e.model.dropout, e.model.dropoute, e.model.wdrop) == (0.1, 0.1, 0.4, 0, 0.2)
    assert (e.train.wdecay, e.train.epochs, e.train.when) == (1.2e-6, 50, (25, 35))


def test_overrides_parse_toml_literals():
    c = load_config("tiny", ["model.nhid=128", "train.lr=1e-3", "combine.epochs=[2, 3]", "train.when=4",
                             "combine.row_split=false", "data.corpus=some/dir", "array.formats.act_frac=10"])
    assert c.model.nhid == 128 and c.train.lr == 1e-3 and c.combine.epochs == (2, 3)
    assert c.train.when == (4,) and c.combine.row_split is False and c.data.corpus == "some/dir"
    assert c.array.formats.act_frac == 10


@pytest.mark.parametrize("override,message", [
    ("model.nhdi=3", "unknown config key 'model.nhdi'"),
    ("modle.nhid=3", "unknown config section"),
    ("model.nhid=big", "model.nhid must be an integer"),
    ("train.lr=-1", "train.lr=-1.0 must be > 0"),
    ("combine.gamma=-0.5", "combine.gamma=-0.5 must be >= 0"),
    ("array.rows=6", "multiple of 4"),
    ("array.alpha=0", "array.alpha=0 must be >= 1"),
    ("prune.sparsity=1.0", "prune.sparsity=1.0 must be in [0, 1)"),
    ("nhid", "must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("tiny", [override])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known presets: .*tiny"):
        load_config("tinyy")


def test_round_trip_through_dict():
    c = load_config("small", ["array.cols=32"])
    assert Config.from_dict(c.to_dict()) == c


def test_array_config_round_trips_through_json(tmp_path):
    a = load_config("tiny").array
    a.save(tmp_path / "a.json")
    assert ArrayConfig.load(tmp_path / "a.json") == a
    assert a.sel_bits == 3 and a.cells == a.rows * a.cols
