"""Tokenization, splits, caching and the errors for bad data."""

import os
from pathlib import Path

import numpy as np
import pytest

from ccflow.corpus import EOS, CorpusError, data_root, load_corpus, prepare_enwik8

SHARED = data_root()


def write_layout(d: Path, train="a b\nc a\n", valid="b c\n", test="a\n"):
    d.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (d / f"{name}.txt").write_text(text)
    return d


def test_standard_layout_splits_on_whitespace_with_eos_per_line(tmp_path):
    c = load_corpus(str(write_layout(tmp_path / "ptb")))
    assert c.vocab == ("a", "b", EOS, "c")  # first appearance over train, valid, test
    assert c.decode(c.train) == "a b \n c a \n"
    assert len(c.valid) == 3 and len(c.test) == 2


def test_blank_lines_give_an_eos_each_like_the_toolkit(tmp_path):
    c = load_corpus(str(write_layout(tmp_path / "d", train="1 2\n\n3\n")))
    assert [c.vocab[i] for i in c.train] == ["1", "2", EOS, EOS, "3", EOS]


def test_builtin_corpus_needs_nothing_outside_the_repo():
    c = load_corpus("builtin")
    assert len(c.train) > 1_000_000 and len(c.valid) > 50_000 and len(c.test) > 50_000
    assert all(len(s) == 1 for s in c.vocab)
    assert c.decode(c.test[:3]) == "'''"


def test_plain_text_is_per_character_90_5_5(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 100)
    c = load_corpus(str(f))
    assert (len(c.train), len(c.valid), len(c.test)) == (900, 50, 50)
    assert c.decode(c.train[:4]) == "abcd"


def test_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path):
    d = write_layout(tmp_path / "c")
    first = load_corpus(str(d))
    cached = list(Path(os.environ["CCFLOW_CACHE"]).glob("*.npz"))
    assert len(cached) == 1
    assert np.array_equal(load_corpus(str(d)).train, first.train)
    (d / "train.txt").write_text("z z z\n")
    assert "z" in load_corpus(str(d)).vocab


@pytest.mark.parametrize("layout,message", [
    ({"train": "", "valid": "a\n", "test": "a\n"}, "is empty"),
    ({"train": "a\n", "valid": "   \n", "test": "a\n"}, "is empty"),
])
def test_empty_splits_are_errors(tmp_path, layout, message):
    with pytest.raises(CorpusError, match=message):
        load_corpus(str(write_layout(tmp_path / "e", **layout)))


def test_missing_files_are_named(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "train.txt").write_text("a\n")
    with pytest.raises(CorpusError, match="missing .*valid.txt"):
        load_corpus(str(tmp_path / "m"))
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(str(tmp_path / "nope"))


def test_unseen_symbol_under_a_fixed_vocabulary(tmp_path):
    d = write_layout(tmp_path / "u", test="a q\n")
    with pytest.raises(CorpusError, match="'q' is not in the model's vocabulary"):
        load_corpus(str(d), vocab=("a", "b", "c", EOS))


def test_prepare_enwik8_matches_the_toolkit_split(tmp_path):
    import zipfile
    data = bytes(range(256)) * 60_000  # 15.36 MB; the split takes 5M + 5M from the end
    data = data.replace(b"\x0b", b"\n")
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as z:
        z.writestr("enwik8", data)
    out = prepare_enwik8(tmp_path / "enwik8.zip", tmp_path / "enwik8")
    c = load_corpus(str(out))
    newline_eos = data[-5_000_000:].count(b"\n") + 1
    assert len(c.test) == 5_000_000 - data[-5_000_000:].count(b"\n") + newline_eos
    assert EOS in c.vocab and "10" not in c.vocab and len(c.vocab) == 256 - 2 + 1


@pytest.mark.skipif(not (SHARED / "pennchar" / "valid.txt").is_file(),
                    reason=f"ptbc-small needs {SHARED}/pennchar (set CCFLOW_DATA)")
def test_ptbc_small_holds_out_the_last_tenth_of_valid():
    c = load_corpus("ptbc-small")
    assert len(c.train) + len(c.valid) == 393_043 and len(c.test) == 442_424
    assert len(c.vocab) == 50
    assert c.decode(c.valid[-1:]) == "\n"
