"""Wrong inputs a user can type: each is refused with one line naming what is wrong and the fix,
a non-zero exit, no traceback, and no earlier output changed.

The commands run in-process through ``ccflow.cli.main`` (an exception escaping it fails the test,
as a traceback would reach the user); a few run as ``python -m ccflow`` to check the real stderr.
Everything works on an untrained 8/12-unit model and a 4 x 2 array, so the file runs in seconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ccflow import checkpoint as ck
from ccflow.cli import main
from ccflow.config import load_config
from ccflow.corpus import load_corpus
from ccflow.model import LSTMLanguageModel
from ccflow.outdir import OutputError, staged_dir

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.emsize=8", "model.nhid=12", "array.rows=4", "array.cols=2", "array.alpha=2"]


def _save_model(path: Path, corpus: str, vocab=None) -> None:
    cfg = load_config("tiny", [f"data.corpus={corpus!r}".replace("'", '"'), *TINY])
    vocab = vocab or load_corpus(cfg.data.corpus).vocab
    model = LSTMLanguageModel(len(vocab), cfg.model)
    ck.atomic_save(ck.make_checkpoint("model", cfg, vocab, model, None, 1, 9.0), path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a tiny checkpoint, its rtl folder, a train folder that lost its checkpoint, odd files."""
    root = tmp_path_factory.mktemp("bad")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CCFLOW_CACHE", str(root / "cache"))
        src = Path(__import__("sysconfig").get_paths()["stdlib"]) / "argparse.py"
        (root / "text.txt").write_text(src.read_text()[:40_000])
        _save_model(root / "model.pt", str(root / "text.txt"))
        vocab = ck.read_checkpoint(root / "model.pt")["vocab"]
        _save_model(root / "moved.pt", str(root / "gone" / "text.txt"), vocab=vocab)  # its corpus has moved
        assert main(["rtl", "--checkpoint", str(root / "model.pt"), "--out", str(root / "rtl"), "--tokens", "8",
                     "--no-score"]) == 0
        (root / "rtl" / "sim").mkdir()
        (root / "rtl" / "sim" / "cache.txt").write_text("a simulator build cache\n")
        left = root / "leftover"  # a run whose checkpoint.pt was deleted to save disk
        left.mkdir()
        (left / "model.pt").write_bytes((root / "model.pt").read_bytes())
        (left / "log.csv").write_text("kind,epoch\nepoch,1\n")
        (root / "other").mkdir()
        (root / "other" / "notes.txt").write_text("not ours\n")
        (root / "random.pt").write_bytes(os.urandom(3000))
        torch.save({"format": ck.FORMAT, "version": ck.VERSION}, root / "tag.pt")
        torch.save({"format": ck.FORMAT, "version": ck.VERSION, "x": _Evil()}, root / "evil.pt")
        (root / "nocols.csv").write_text("a,b\n1,2\n")
        (root / "badvalues.csv").write_text("kind,epoch,train_bpc,valid_bpc,nonzero_weights,packed_cells\n"
                                            "epoch,one,2,3,4,5\n")
        (root / "log.csv").write_text("kind,epoch,train_bpc,valid_bpc,nonzero_weights,packed_cells\n"
                                      "epoch,1,3.1,3.0,1000,800\n")
        (root / "empty.txt").write_text("")
        shutil.copytree(root / "rtl", root / "damaged")
        (root / "damaged" / "report.json").write_text('{"config": ')
        (root / "damaged" / "stimulus.json").write_text('[1, 2]')
        (root / "notazip.zip").write_text("hello\n")
        with zipfile.ZipFile(root / "small.zip", "w") as z:
            z.writestr("enwik8", b"x" * 1000)
        (root / "enwik").mkdir()
        (root / "enwik" / "train.txt").write_text("an earlier split\n")
    return root


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "cache" not in p.parts}


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    return code, capsys.readouterr().err


# (command line with {ws} for the workspace, exit status, phrase the message contains, environment)
CASES = [
    # train: settings, all checked in config validation
    ("train --set train.seed=-1", 2, "train.seed=-1 must be in 0..", {}),
    ("train --set train.eval_batch_size=0", 2, "train.eval_batch_size=0 must be >= 1", {}),
    ("train --set train.test_batch_size=0", 2, "train.test_batch_size=0 must be >= 1", {}),
    ("train --set train.log_interval=0", 2, "train.log_interval=0 must be >= 1", {}),
    ("train --set train.max_batches=-1", 2, "train.max_batches=-1 must be >= 0", {}),
    ("train --set train.when=[0]", 2, "train.when=[0] must list epochs >= 1", {}),
    ("train --set train.ar=-1", 2, "train.ar=-1.0 must be >= 0", {}),
    ("train --set combine.gamma=inf", 2, "combine.gamma=inf must be a finite number", {}),
    ("train --set train.lr=nan", 2, "train.lr=nan must be a finite number", {}),
    ("train --set model.dropout=1.5", 2, "model.dropout=1.5 must be in [0, 1)", {}),
    ("train --set array.formats.max_shift=-1", 2, "max_shift=-1 must be in 0..63", {}),
    ("train --set model.nhid=big", 2, "model.nhid must be an integer", {}),
    ("train --epochs 0", 2, "train.epochs=0 must be >= 1", {}),
    ("train --config nosuch", 2, "known presets", {}),
    ("train --data {ws}/nosuch.txt --out {ws}/new", 2, "not found", {}),
    # train: where it writes, and on what
    ("train --data {ws}/model.pt --out {ws}/new", 2, "not UTF-8 text", {}),
    ("train --data {ws}/empty.txt --out {ws}/new", 2, "is empty; give a text file", {}),
    ("train --data {ws}/other --out {ws}/new", 2, "is not a corpus directory", {}),
    ("train --config {ws}/text.txt", 2, "not valid TOML", {}),
    ("train --config {ws}/nosuch.toml", 2, "does not exist; give a preset name", {}),
    ("train --out {ws}/text.txt", 2, "is a file, not a folder", {}),
    ("train --out {ws}/text.txt/run", 2, "which is a file", {}),
    ("train --out {ws}/leftover", 2, "no checkpoint.pt, so --resume is impossible", {}),
    ("train --out {ws}/leftover --resume", 2, "choose another --out, or delete the folder", {}),
    ("train --device foo --out {ws}/new", 2, "--device 'foo' is not a device", {}),
    ("train --device tpu --out {ws}/new", 2, "is not a device", {}),
    ("train --threads 0 --out {ws}/new", 2, "--threads 0 must be >= 1", {}),
    ("train --out {ws}/new", 2, "OMP_NUM_THREADS='many' is not a whole number", {"OMP_NUM_THREADS": "many"}),
    # checkpoints
    ("eval {ws}", 2, "is a folder; give the checkpoint file inside it: {ws}/model.pt", {}),
    ("eval {ws}/nosuch.pt", 2, "no checkpoint at", {}),
    ("eval {ws}/random.pt", 2, "not a readable PyTorch file", {}),
    ("eval {ws}/text.txt", 2, "not a readable PyTorch file", {}),
    ("eval {ws}/tag.pt", 2, "damaged ccflow checkpoint (missing or wrong kind, config", {}),
    ("eval {ws}/evil.pt", 2, "holds pickled Python objects (posix.system)", {}),
    ("eval {ws}/model.pt --device foo", 2, "is not a device", {}),
    ("eval {ws}/model.pt --split dev", 2, "invalid choice", {}),
    # rtl: refused before anything is written
    ("rtl --checkpoint {ws}/model.pt --out {ws}/rtl --tokens -5", 2, "--tokens -5", {}),
    ("rtl --checkpoint {ws}/model.pt --out {ws}/rtl --tokens 0", 2, "at least 1 token", {}),
    ("rtl --checkpoint {ws}/model.pt --out {ws}/rtl --streams 0", 2, "--streams 0", {}),
    ("rtl --checkpoint {ws}/moved.pt --out {ws}/rtl --no-score", 2, "not found", {}),
    ("rtl --checkpoint {ws}/model.pt --out {ws}/rtl --set array.rows=6", 2, "multiple of 4", {}),
    ("rtl --checkpoint {ws}/model.pt --out {ws}/text.txt", 2, "is a file, not a folder", {}),
    ("rtl --checkpoint {ws}/model.pt --out {ws}/other", 2, "choose a new or empty --out", {}),
    ("rtl --checkpoint {ws}/rtl --out {ws}/rtl2", 2, "is a folder; give the checkpoint file inside it", {}),
    ("rtl --checkpoint {ws}/model.pt --out {ws}/rtl --tokens x", 2, "invalid int value", {}),
    # sim, hls, summary, lint, fpga on the rtl folder
    ("sim --rtl {ws}/rtl --tokens 0", 2, "simulate at least 1 token", {}),
    ("hls --rtl {ws}/rtl --tokens -1", 2, "simulate at least 1 token", {}),
    ("sim --rtl {ws}/nosuch", 2, "--rtl {ws}/nosuch does not exist", {}),
    ("hls --rtl {ws}/text.txt", 2, "is a file; give the folder written by `ccflow rtl --out`", {}),
    ("summary --rtl {ws}/nosuch", 2, "does not exist", {}),
    ("summary --rtl {ws}/other", 2, "holds no generated design", {}),
    ("lint --rtl {ws}/nosuch", 2, "does not exist", {}),
    ("summary --rtl {ws}/damaged", 2, "report.json is not valid JSON", {}),
    ("sim --rtl {ws}/damaged", 2, "stimulus.json does not hold what `ccflow rtl` wrote there", {}),
    ("hls --rtl {ws}/damaged", 2, "stimulus.json does not hold what", {}),
    ("sim --rtl {ws}/rtl --sim modelsim", 2, "invalid choice", {}),
    ("fpga --rtl {ws}/rtl --freq 0 --synth-only", 2, "--freq 0.0 must be a clock target in MHz > 0", {}),
    ("fpga --rtl {ws}/rtl --freq -5", 2, "--freq -5.0 must be", {}),
    ("fpga --rtl {ws}/rtl --seed -1", 2, "--seed -1 must be >= 0", {}),
    ("fpga --rtl {ws}/rtl --placer-density 2", 2, "placer density must be in (0, 1]", {}),
    ("fpga --rtl {ws}/rtl --placer-timing-weight 0", 2, "--placer-timing-weight 0 must be an int >= 1", {}),
    ("fpga --rtl {ws}/text.txt --synth-only", 2, "a file, not a folder", {}),
    ("fpga --rtl {ws}/nosuch --xilinx --no-ecp5", 2, "no such folder", {}),
    # combine
    ("combine {ws}/model.pt --set array.alpha=0", 2, "array.alpha=0 must be >= 1", {}),
    ("combine {ws}/model.pt --recombine --set combine.gamma=inf", 2, "combine.gamma=inf must be a finite number", {}),
    ("combine {ws}/model.pt --recombine --set combine.gamma=-1", 2, "combine.gamma=-1.0 must be >= 0", {}),
    ("combine {ws}/model.pt --set array.rows=6", 2, "multiple of 4", {}),
    ("combine {ws}/model.pt --set combine.row_block=4", 2, "unknown config key 'combine.row_block'", {}),
    ("combine {ws}/tag.pt", 2, "damaged ccflow checkpoint", {}),
    # plots
    ("plots {ws} --out {ws}/plots", 2, "is a folder; give the log file inside it", {}),
    ("plots {ws}/model.pt --out {ws}/plots", 2, "not a ccflow training log", {}),
    ("plots {ws}/nocols.csv --out {ws}/plots", 2, "lacks the column(s) kind, epoch", {}),
    ("plots {ws}/badvalues.csv --out {ws}/plots", 2, "not a ccflow training log", {}),
    ("plots {ws}/nosuch.csv --out {ws}/plots", 2, "not found", {}),
    ("plots {ws}/log.csv --out {ws}/text.txt", 2, "--out {ws}/text.txt is a file", {}),
    ("plots {ws}/log.csv --out {ws}/text.txt/plots", 2, "which is a file", {}),
    # prepare-enwik8
    ("prepare-enwik8 {ws}/nosuch.zip {ws}/enwik", 2, "not found; download enwik8.zip", {}),
    ("prepare-enwik8 {ws}/notazip.zip {ws}/enwik", 2, "not the enwik8 archive", {}),
    ("prepare-enwik8 {ws}/small.zip {ws}/enwik", 2, "expected 100,000,000", {}),
    ("prepare-enwik8 {ws}/small.zip {ws}/other", 2, "choose a new or empty out", {}),
]


@pytest.mark.parametrize("line,code,phrase,env", CASES, ids=[c[0].replace("{ws}/", "").replace("{ws}", "WS")
                                                               for c in CASES])
def test_a_bad_input_is_one_line_naming_the_fix_and_changes_nothing(ws, capsys, monkeypatch, line, code, phrase,
                                                                    env):
    monkeypatch.setenv("CCFLOW_CACHE", str(ws / "cache"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = _hashes(ws)
    status, err = _run(line.format(ws=ws).split(), capsys)
    assert status == code, err
    assert phrase.format(ws=ws) in err
    assert "Traceback" not in err and "internal error" not in err
    lines = err.strip().splitlines()
    if lines[0].startswith("usage:"):  # argparse's refusals: its usage, then one error line
        assert lines[-1].startswith("ccflow ") and ": error: " in lines[-1], err
    else:
        assert len(lines) == 1 and lines[0].startswith(f"ccflow {line.split()[0]}: error: "), err
    assert _hashes(ws) == before, "a refused command changed an earlier output"
    assert not (ws / "new").exists() and not (ws / "rtl2").exists() and not (ws / "plots").exists()
    assert not [p for p in ws.iterdir() if ".tmp-" in p.name or ".old-" in p.name], "a staging folder was left"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_refused(ws, capsys):
    status, err = _run(["train", "--device", "cuda", "--out", str(ws / "new")], capsys)
    assert status == 2 and "no CUDA GPU is visible here; use --device cpu" in err and "Traceback" not in err


def test_the_real_stderr_has_the_prefix_and_no_traceback(ws):
    """sim, hls and summary, run as a user runs them: `ccflow X: error:` and status 2, like the others."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), OMP_NUM_THREADS="1", CCFLOW_CACHE=str(ws / "cache"))
    for args, phrase in ((["sim", "--rtl", str(ws / "rtl"), "--tokens", "0"], "ccflow sim: error: --tokens 0"),
                         (["hls", "--rtl", str(ws / "rtl"), "--tokens", "0"], "ccflow hls: error: --tokens 0"),
                         (["summary", "--rtl", str(ws / "nosuch")], "ccflow summary: error: --rtl")):
        p = subprocess.run([sys.executable, "-m", "ccflow", *args], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=120)
        assert p.returncode == 2 and p.stderr.startswith(phrase) and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


def test_a_failed_rtl_leaves_the_previous_design_as_it_was(ws, capsys, monkeypatch):
    """The issue's case: a late failure (here in rendering) must not mix a new design with the old report."""
    monkeypatch.setenv("CCFLOW_CACHE", str(ws / "cache"))
    before = _hashes(ws / "rtl")
    import ccflow.hls

    def broken(*a, **k):
        raise OSError(28, "No space left on device", "hls.cpp")

    monkeypatch.setattr(ccflow.hls, "render_hls", broken)
    status, err = _run(["rtl", "--checkpoint", str(ws / "model.pt"), "--out", str(ws / "rtl"), "--tokens", "4",
                        "--no-score", "--set", "array.cols=4"], capsys)
    assert status == 2 and "No space left on device" in err and "Traceback" not in err
    assert _hashes(ws / "rtl") == before
    assert not [p for p in ws.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_new_rtl_replaces_the_folder_whole_and_keeps_the_caches(ws, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CCFLOW_CACHE", str(ws / "cache"))
    out = tmp_path / "rtl"
    assert main(["rtl", "--checkpoint", str(ws / "model.pt"), "--out", str(out), "--tokens", "8", "--no-score"]) == 0
    (out / "sim").mkdir()
    (out / "sim" / "cache.txt").write_text("kept\n")
    (out / "stale.v").write_text("// from an older template set\n")
    assert main(["rtl", "--checkpoint", str(ws / "model.pt"), "--out", str(out), "--tokens", "3", "--no-score"]) == 0
    capsys.readouterr()
    assert (out / "sim" / "cache.txt").read_text() == "kept\n"
    assert not (out / "stale.v").exists()
    assert '"tokens": [' in (out / "stimulus.json").read_text()
    assert len(__import__("json").loads((out / "stimulus.json").read_text())["tokens"]) == 3


def test_staged_dir_keeps_the_old_folder_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old\n")
    with pytest.raises(RuntimeError):
        with staged_dir(out, "report.json") as tmp:
            (tmp / "report.json").write_text("new\n")
            raise RuntimeError("late failure")
    assert (out / "report.json").read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_dir(out, "report.json") as tmp:
        (tmp / "report.json").write_text("new\n")
    assert (out / "report.json").read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work\n")
    with pytest.raises(OutputError, match="choose a new or empty"):
        with staged_dir(tmp_path / "mine", "report.json"):
            pass
    assert (tmp_path / "mine" / "thesis.tex").is_file()


@pytest.mark.sim
def test_a_missing_or_damaged_rom_is_named_as_readmemh_reported_it(ws, capsys, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("CCFLOW_CACHE", str(ws / "cache"))
    rtl = tmp_path / "rtl"
    shutil.copytree(ws / "rtl", rtl)
    (rtl / "weights.mem").unlink()
    status, err = _run(["sim", "--rtl", str(rtl), "--tokens", "2"], capsys)
    assert status == 2 and "Traceback" not in err
    assert "ccflow sim: error: icarus: a ROM could not be read" in err and "weights.mem" in err and "readmemh" in err
