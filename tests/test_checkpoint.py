"""Checkpoints: exact resume (epoch boundary and mid-epoch signal), safe loading, refusals, atomic writes."""

import os
import signal
from pathlib import Path

import pytest
import torch

import ccflow.train as train_mod
from ccflow.checkpoint import CheckpointError, atomic_save, load_model, read_checkpoint
from ccflow.config import ConfigError, load_config
from ccflow.evaluate import evaluate_checkpoint
from ccflow.train import TrainingInterrupted, run_training


def _cfg(corpus, *overrides):
    # every source of randomness in play: all dropouts, random BPTT, pruning, a combine step in epoch 2
    return load_config("tiny", [f'data.corpus="{corpus}"', "train.max_batches=6", "train.epochs=2",
                                "train.log_interval=2", "model.dropoute=0.1", "prune.sparsity=0.5",
                                "prune.start_epoch=1", "prune.ramp_epochs=1", "combine.epochs=[2]", *overrides])


def _assert_same_run(a: Path, b: Path):
    ca, cb = read_checkpoint(a / "checkpoint.pt"), read_checkpoint(b / "checkpoint.pt")
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), f"{k} differs"
    sa, sb = ca["train"]["optimizer"]["state"], cb["train"]["optimizer"]["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"optimizer state {i}.{k} differs"
    assert ca["packings"] == cb["packings"]
    assert ca["train"]["step"] == cb["train"]["step"] and ca["epoch"] == cb["epoch"]
    ma, mb = load_model(a / "model.pt"), load_model(b / "model.pt")
    assert ma.epoch == mb.epoch and ma.valid_bpc == mb.valid_bpc
    assert evaluate_checkpoint(a / "model.pt", "test") == evaluate_checkpoint(b / "model.pt", "test")
    cols = ("kind", "epoch", "step", "train_bpc", "valid_bpc", "lr", "nonzero_weights", "packed_cells")
    rows = [[{c: r[c] for c in cols} for r in _log(d)] for d in (a, b)]
    assert rows[0] == rows[1]


def _log(d):
    import csv
    with open(d / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_one_epoch_then_resume_equals_two_epochs_bitwise(text_corpus, tmp_path):
    run_training(_cfg(text_corpus), tmp_path / "straight")
    run_training(_cfg(text_corpus, "train.epochs=1"), tmp_path / "resumed")
    assert read_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    run_training(_cfg(text_corpus), tmp_path / "resumed", resume=True)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    # resuming a finished run changes nothing
    before = (tmp_path / "resumed" / "model.pt").read_bytes()
    run_training(_cfg(text_corpus), tmp_path / "resumed", resume=True)
    assert (tmp_path / "resumed" / "model.pt").read_bytes() == before


@pytest.mark.parametrize("sig,at_step", [(signal.SIGTERM, 9), (signal.SIGINT, 8), (signal.SIGTERM, 12)])
def test_a_signal_mid_epoch_saves_and_resume_is_exact(text_corpus, tmp_path, monkeypatch, sig, at_step):
    _cut_and_resume(text_corpus, tmp_path, monkeypatch, sig, at_step)


def test_resume_is_exact_with_distillation_l1_soft_combining_and_a_bank_balanced_cubic_ramp(text_corpus, tmp_path, monkeypatch):
    teacher = run_training(_cfg(text_corpus, "train.epochs=1", "prune.sparsity=0", "combine.epochs=[]"),
                           tmp_path / "teacher")
    _cut_and_resume(text_corpus, tmp_path, monkeypatch, signal.SIGTERM, 9, f'train.distill="{teacher}"',
                    "train.distill_weight=0.7", "train.distill_temp=2.0", "prune.l1=1e-4", "prune.ramp_epochs=2",
                    "prune.steps=2", "prune.schedule=cubic", "prune.method=bank_balanced", "prune.bank_size=8",
                    "combine.soft_epochs=1", "combine.soft_decay=0.1")


def _cut_and_resume(text_corpus, tmp_path, monkeypatch, sig, at_step, *overrides):
    cfg = _cfg(text_corpus, *overrides)
    run_training(cfg, tmp_path / "straight")
    handler_before = signal.getsignal(sig)  # SIG_IGN for SIGINT when started in the background
    calls = {"n": 0}
    enforce = train_mod.enforce_masks

    def enforce_then_signal(model):  # the signal lands in the middle of a step of epoch 2 (6 steps per epoch)
        enforce(model)
        calls["n"] += 1
        if calls["n"] == at_step:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(train_mod, "enforce_masks", enforce_then_signal)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        run_training(cfg, tmp_path / "cut")
    ck = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["train"]["pos"]["batch"] == at_step - 6 and ck["train"]["step"] == at_step
    assert signal.getsignal(sig) is handler_before, "handlers restored"
    monkeypatch.setattr(train_mod, "enforce_masks", enforce)
    run_training(cfg, tmp_path / "cut", resume=True)
    _assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_another_configuration_is_refused_naming_the_keys(text_corpus, tmp_path):
    out = tmp_path / "run"
    run_training(_cfg(text_corpus, "train.epochs=1"), out)
    with pytest.raises(ConfigError, match="--resume"):
        run_training(_cfg(text_corpus, "train.epochs=1"), out)
    with pytest.raises(CheckpointError) as e:
        run_training(_cfg(text_corpus, "model.nhid=48", "train.lr=1e-3"), out, resume=True)
    msg = str(e.value)
    assert "model.nhid: 64 vs 48" in msg and "train.lr" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match=r"model\.emsize: 32 vs 16"):
        load_model(out / "model.pt", expect=_cfg(text_corpus, "model.emsize=16"))
    tm = load_model(out / "model.pt", expect=_cfg(text_corpus, "train.epochs=9"))  # training keys may differ
    with pytest.raises(CheckpointError, match="vocab"):
        load_model(out / "model.pt", vocab=tm.vocab[::-1])


def test_load_model_restores_everything_downstream_needs(text_corpus, tmp_path):
    out = tmp_path / "run"
    run_training(_cfg(text_corpus, "train.epochs=3"), out)
    tm = load_model(out / "model.pt")
    assert tm.epoch >= 2 and not tm.model.training and tm.config.model.nhid == 64
    assert sorted(tm.packings) == [0, 1, 2]
    for l, layer in enumerate(tm.model.layers):
        from ccflow.combine import lstm_matrix
        w_ih, w_hh = layer.effective_weights()
        assert ((lstm_matrix(w_ih.detach().numpy(), w_hh.detach().numpy()) != 0) <= tm.packings[l].mask).all()
    assert tm.model.decoder.weight is tm.model.encoder.weight, "tying survives loading"
    raw = read_checkpoint(out / "model.pt")
    assert raw["kind"] == "model" and "train" not in raw
    assert read_checkpoint(out / "checkpoint.pt")["kind"] == "full"


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "ccflow-checkpoint", "version": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="holds pickled Python objects") as e:
        load_model(path)
    assert "weights_only=False" not in str(e.value) and "set to `False`" not in str(e.value)  # not torch's advice
    assert "\x1b" not in str(e.value)  # nor its colour codes
    torch.save({"hello": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a ccflow checkpoint"):
        load_model(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"a": torch.ones(3)}, path)
    good = path.read_bytes()

    def broken(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ck.pt"], "no temporary file left behind"
