"""The training loop: the AWD-LSTM recipe, the schedule, the log, evaluation and plots."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ccflow.train as train_mod
from ccflow.checkpoint import load_model
from ccflow.config import ModelConfig, load_config
from ccflow.corpus import CorpusError, data_root, load_corpus
from ccflow.evaluate import batchify, evaluate, evaluate_checkpoint
from ccflow.model import LSTMLanguageModel
from ccflow.cli import main
from ccflow.prune import final_mask_epoch, nonzero_weights
from ccflow.quantize import FloatModel, quantize
from ccflow.train import draw_seq_len, regularized_loss, run_training


def _cfg(corpus, *overrides):
    return load_config("tiny", [f"data.corpus={corpus!r}".replace("'", '"'), "train.max_batches=6",
                                "train.epochs=2", "train.log_interval=2", *overrides])


def _rows(out):
    with open(Path(out) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_random_bptt_length_follows_the_toolkit():
    np.random.seed(0)
    draws = np.array([draw_seq_len(150) for _ in range(20000)])
    assert draws.min() >= 5
    half = draws < 112
    assert 0.04 < half.mean() < 0.06, "bptt/2 with probability 0.05"
    assert abs(draws[~half].mean() - 149.5) < 0.3 and abs(draws[~half].std() - 5) < 0.3
    assert abs(draws[half].mean() - 74.5) < 1.0
    np.random.seed(0)
    assert min(draw_seq_len(4) for _ in range(200)) == 5


def test_lr_is_scaled_by_seq_len_and_divided_after_when_epochs(text_corpus, tmp_path, monkeypatch):
    lengths = iter([60, 64, 70, 32, 64, 66, 5, 64, 64, 64, 64, 64])
    monkeypatch.setattr(train_mod, "draw_seq_len", lambda bptt: next(lengths))
    seen = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    cfg = _cfg(text_corpus, "train.when=[1]", "train.lr=1e-2", "combine.epochs=[]")
    run_training(cfg, tmp_path / "run")
    want = [1e-2 * n / 64 for n in (60, 64, 70, 32, 64, 66)] + [1e-3 * n / 64 for n in (5, 64, 64, 64, 64, 64)]
    assert seen == pytest.approx(want, rel=1e-12)
    epochs = [r for r in _rows(tmp_path / "run") if r["kind"] == "epoch"]
    assert [float(r["lr"]) for r in epochs] == pytest.approx([1e-2, 1e-3])


def test_gradients_are_clipped_to_train_clip(text_corpus, tmp_path, monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        out = clip(params, max_norm, *a, **k)
        after = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        norms.append((max_norm, float(out), float(after)))
        return out

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    run_training(_cfg(text_corpus, "train.clip=0.05", "train.epochs=1", "combine.epochs=[]"), tmp_path / "run")
    assert len(norms) == 6 and all(m == 0.05 for m, _, _ in norms)
    assert any(before > 0.05 for _, before, _ in norms), "the test needs gradients above the clip"
    assert all(after <= 0.05 * (1 + 1e-5) for _, _, after in norms)


def test_ar_and_tar_are_the_toolkits_alpha_and_beta():
    torch.manual_seed(0)
    raw, dropped, ce = torch.randn(7, 3, 5), torch.randn(7, 3, 5), torch.tensor(2.0)
    extras = {"raw": raw, "dropped": dropped}
    assert regularized_loss(ce, extras, 0.0, 0.0) == ce
    want = ce + 2.0 * dropped.pow(2).mean() + 1.5 * (raw[1:] - raw[:-1]).pow(2).mean()
    assert torch.allclose(regularized_loss(ce, extras, 2.0, 1.5), want)


def test_ar_tar_weight_decay_and_sgd_change_training(text_corpus, tmp_path):
    def final(name, *over):
        run_training(_cfg(text_corpus, "train.epochs=1", "combine.epochs=[]", "prune.sparsity=0", *over),
                     tmp_path / name)
        return load_model(tmp_path / name / "checkpoint.pt").model.layers[2].weight_hh.detach()

    base = final("base")
    assert torch.equal(base, final("again")), "same seed, same run"
    for i, over in enumerate([["train.ar=2.0"], ["train.tar=1.0"], ["train.wdecay=0.1"], ["train.optimizer=\"sgd\""]]):
        assert not torch.equal(base, final(f"v{i}", *over)), over


def test_log_schedule_and_best_checkpoint(text_corpus, tmp_path, capsys):
    cfg = _cfg(text_corpus, "train.epochs=4", "prune.sparsity=0.6", "prune.start_epoch=1", "prune.ramp_epochs=2",
               "combine.epochs=[3]", "combine.gamma=0.5")
    out = tmp_path / "run"
    assert run_training(cfg, out) == out / "model.pt"
    rows = _rows(out)
    required = {"kind", "epoch", "step", "train_bpc", "valid_bpc", "lr", "ms_per_batch", "chars_per_s",
                "nonzero_weights", "packed_cells", "utilization"}
    assert required <= set(rows[0])
    epochs = [r for r in rows if r["kind"] == "epoch"]
    batches = [r for r in rows if r["kind"] == "batch"]
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3, 4] and len(batches) == 4 * 3
    assert all(r["valid_bpc"] == "" for r in batches) and all(float(r["valid_bpc"]) > 0 for r in epochs)
    nnz = [int(r["nonzero_weights"]) for r in rows]
    assert nnz == sorted(nnz, reverse=True), "nonzero weights never grow back"
    assert [round(float(r["sparsity"]), 2) for r in epochs[:2]] == [0.3, 0.6], "the LSTM matrices' pruning target"
    assert int(epochs[2]["packed_cells"]) < int(epochs[1]["packed_cells"]), "combining at epoch 3 packs tighter"

    full = load_model(out / "checkpoint.pt")
    # One definition of packed cells: the log's last figures are exactly what `ccflow rtl` lays out
    design = quantize(FloatModel.from_torch(full.model), cfg.array, full.packings)
    assert design.packed_cells == int(epochs[-1]["packed_cells"]) and design.nnz == int(epochs[-1]["nonzero_weights"])
    assert nonzero_weights(full.model) + full.model.encoder.weight.numel() == design.nnz
    assert float(epochs[-1]["utilization"]) == pytest.approx(
        int(epochs[-1]["nonzero_weights"]) / int(epochs[-1]["packed_cells"]), abs=1e-6)
    best = load_model(out / "model.pt")
    last = final_mask_epoch(cfg)
    eligible = {int(r["epoch"]): float(r["valid_bpc"]) for r in epochs if int(r["epoch"]) >= last}
    assert best.epoch == min(eligible, key=eligible.get)
    assert best.valid_bpc == pytest.approx(eligible[best.epoch], abs=1e-6)
    assert best.packings is not None and not best.model.training
    # `ccflow combine` reports the same count as the design `ccflow rtl` would lay out
    capsys.readouterr()
    assert main(["combine", str(out / "model.pt")]) == 0
    total = capsys.readouterr().out.strip().splitlines()[-1]
    cells = quantize(FloatModel.from_torch(best.model), cfg.array, best.packings).packed_cells
    assert total.startswith(f"   total: {cells:,} packed cells"), total
    # the valid BPC in the log is what evaluate_checkpoint measures for those weights
    assert evaluate_checkpoint(out / "model.pt", "valid") == pytest.approx(best.valid_bpc, abs=1e-9)


def test_distillation_pulls_the_student_toward_the_teacher(text_corpus, tmp_path):
    teacher_pt = run_training(_cfg(text_corpus, "train.epochs=3", "prune.sparsity=0", "combine.epochs=[]"),
                              tmp_path / "teacher")
    base = ("prune.sparsity=0", "combine.epochs=[]", "train.seed=7", "model.nhid=32")
    plain = run_training(_cfg(text_corpus, *base), tmp_path / "plain")
    taught = run_training(_cfg(text_corpus, *base, f'train.distill="{teacher_pt}"', "train.distill_weight=1.0",
                               "train.distill_temp=2.0"), tmp_path / "taught")
    teacher = load_model(teacher_pt).model
    valid = load_corpus(text_corpus).valid[:2000]

    def kl_to_teacher(path):
        student = load_model(path).model
        x = batchify(valid, 4, "cpu")[:-1]
        with torch.no_grad():
            p, _, _ = teacher(x, teacher.init_hidden(4))
            q, _, _ = student(x, student.init_hidden(4))
        return float(torch.nn.functional.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True,
                                                reduction="batchmean"))

    assert kl_to_teacher(taught) < kl_to_teacher(plain)


def test_a_teacher_of_another_corpus_is_refused_in_one_line(text_corpus, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("abc " * 3000)
    teacher = run_training(_cfg(str(other), "prune.sparsity=0", "combine.epochs=[]"), tmp_path / "teacher")
    assert main(["train", "--config", "tiny", "--out", str(tmp_path / "s"), "--set", f'data.corpus="{text_corpus}"',
                 "--set", f'train.distill="{teacher}"', "--set", "train.max_batches=2", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ccflow train: error: train.distill (the teacher): ") and "vocab" in err[-1]
    assert not (tmp_path / "s" / "checkpoint.pt").exists()


def test_combine_aware_pruning_shrinks_what_the_combine_then_cuts(text_corpus, tmp_path, monkeypatch):
    import ccflow.prune as prune_mod

    real, cut = prune_mod.combine_model, {}

    def spy(model, cfg):  # |w| of the weights the hard combine removes
        before = [(l.weight_ih.detach().clone(), l.mask_ih.clone(), l.weight_hh.detach().clone(), l.mask_hh.clone())
                  for l in model.layers]
        packings = real(model, cfg)
        cut[cfg.combine.soft_epochs] = sum(
            float(w_ih[m_ih & ~l.mask_ih].abs().sum() + w_hh[m_hh & ~l.mask_hh].abs().sum())
            for (w_ih, m_ih, w_hh, m_hh), l in zip(before, model.layers))
        return packings

    monkeypatch.setattr(prune_mod, "combine_model", spy)
    for soft in (0, 2):
        run_training(_cfg(text_corpus, "train.epochs=3", "prune.sparsity=0.5", "prune.start_epoch=1",
                          "prune.ramp_epochs=1", "combine.epochs=[3]", "combine.gamma=0.5", f"combine.soft_epochs={soft}",
                          "combine.soft_decay=0.2"), tmp_path / f"soft{soft}")
    # 12 steps at 0.8 leave about 7% of the magnitude; training pulls some back
    assert 0 < cut[2] < 0.25 * cut[0]


def test_final_dropout_scales_every_dropout_once_the_masks_are_final(text_corpus, tmp_path, monkeypatch):
    seen = []  # (dropout scale, weight drop of each layer) at every training forward
    real = LSTMLanguageModel.forward

    def spy(self, tokens, hidden):
        if self.training:
            seen.append((self.dropout_scale, tuple(l.wdrop for l in self.layers)))
        return real(self, tokens, hidden)

    monkeypatch.setattr(LSTMLanguageModel, "forward", spy)
    cfg = _cfg(text_corpus, "train.epochs=3", "train.max_batches=2", "prune.sparsity=0.5", "prune.start_epoch=1",
               "prune.ramp_epochs=1", "combine.epochs=[]", "train.final_dropout=0.25", "model.wdrop=0.4")
    assert final_mask_epoch(cfg) == 1
    run_training(cfg, tmp_path / "run")
    assert seen[:2] == [(1.0, (0.4,) * 3)] * 2, "configured dropouts while the masks still change"
    assert seen[2:] == [(0.25, (0.1,) * 3)] * 4, "a quarter of them in epochs 2 and 3"


def test_no_dropout_once_final_makes_training_forward_the_eval_one():
    torch.manual_seed(0)
    model = LSTMLanguageModel(20, ModelConfig(emsize=16, nhid=16, nlayers=2, dropout=0.3, dropouth=0.3,
                                              dropouti=0.3, dropoute=0.1, wdrop=0.3))
    tokens = torch.randint(0, 20, (7, 3))
    model.eval()
    want = model(tokens, model.init_hidden(3))[0]
    model.train()
    assert not torch.allclose(model(tokens, model.init_hidden(3))[0], want)
    model.set_dropout_scale(0.0)
    assert torch.allclose(model(tokens, model.init_hidden(3))[0], want)


def test_evaluate_carries_the_hidden_state_across_chunks():
    torch.manual_seed(0)
    m = LSTMLanguageModel(11, ModelConfig(emsize=6, nhid=10, nlayers=3))
    data = np.random.default_rng(0).integers(0, 11, 403).astype(np.int32)
    whole = evaluate(m, data, batch_size=2, bptt=1000, device="cpu")
    chunked = evaluate(m, data, batch_size=2, bptt=7, device="cpu")
    assert chunked == pytest.approx(whole, abs=1e-6)
    # a model that predicts uniformly scores exactly log2(V)
    with torch.no_grad():
        m.encoder.weight.zero_()
        m.decoder.bias.zero_()
    assert evaluate(m, data, 4, 16, "cpu") == pytest.approx(math.log2(11), abs=1e-6)
    assert m.training, "evaluate restores the model's mode"
    with pytest.raises(CorpusError, match="batch size"):
        batchify(data[:5], 4)


def test_evaluate_checkpoint_refuses_unseen_symbols(text_corpus, tmp_path):
    run_training(_cfg(text_corpus, "train.epochs=1", "combine.epochs=[]"), tmp_path / "run")
    other = tmp_path / "other.txt"
    other.write_text("é" * 3000)
    with pytest.raises(CorpusError, match="not in the model's vocabulary"):
        evaluate_checkpoint(tmp_path / "run" / "model.pt", "test", corpus_spec=str(other))
    bpc = evaluate_checkpoint(tmp_path / "run" / "model.pt", "test")
    assert 1 < bpc < 8


def test_plots(text_corpus, tmp_path):
    from ccflow.plots import plot_training

    run_training(_cfg(text_corpus, "train.epochs=3", "combine.epochs=[2]"), tmp_path / "a")
    run_training(_cfg(text_corpus, "train.epochs=2", "prune.sparsity=0", "combine.epochs=[]"), tmp_path / "b")
    paths = plot_training([tmp_path / "a" / "log.csv", tmp_path / "b" / "log.csv"], tmp_path / "fig")
    assert sorted(p.name for p in paths) == ["bpc_vs_epoch.png", "bpc_vs_packed_cells.png", "nonzeros_vs_epoch.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


@pytest.mark.skipif(not (data_root() / "pennchar" / "valid.txt").is_file(),
                    reason="ptbc-small needs ../shared/data/pennchar (set CCFLOW_DATA)")
def test_ptbc_small_trains(tmp_path):
    cfg = load_config("small", ["model.emsize=32", "model.nhid=32", "train.max_batches=3", "train.epochs=1"])
    run_training(cfg, tmp_path / "run")
    corpus = load_corpus("ptbc-small")
    assert corpus.ntokens == 50
    bpc = evaluate_checkpoint(tmp_path / "run" / "model.pt", "valid")
    assert 2 < bpc < math.log2(50) + 0.5
