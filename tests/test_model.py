"""The model: fused-kernel LSTM with masks, the AWD-LSTM dropouts, tying, preset shapes."""

import math

import pytest
import torch
from torch import nn

import ccflow.model as model_mod
from ccflow.config import ModelConfig, load_config
from ccflow.model import LSTMLanguageModel, MaskedLSTM, embedded_dropout, locked_dropout


def _pair(I=6, H=5, wdrop=0.0, seed=0):
    torch.manual_seed(seed)
    ours = MaskedLSTM(I, H, wdrop)
    ref = nn.LSTM(I, H)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(ours, name))
    return ours, ref


def test_masked_lstm_matches_nn_lstm_bitwise_forward_and_backward():
    ours, ref = _pair()
    x = torch.randn(7, 3, 6)
    hx = (torch.randn(1, 3, 5), torch.randn(1, 3, 5))
    out, (h, c) = ours(x, hx)
    out_r, (h_r, c_r) = ref(x, hx)
    assert torch.equal(out, out_r) and torch.equal(h, h_r) and torch.equal(c, c_r)
    (out.sum() + c.sum()).backward()
    (out_r.sum() + c_r.sum()).backward()
    assert torch.equal(ours.weight_hh.grad, ref.weight_hh_l0.grad)
    assert torch.equal(ours.weight_ih.grad, ref.weight_ih_l0.grad)


def test_default_init_is_pytorch_lstm_init():
    layer = MaskedLSTM(10, 40)
    bound = 1 / math.sqrt(40)
    for p in layer.parameters():
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound
    assert layer.mask_ih.dtype == torch.bool and layer.mask_ih.all() and layer.mask_hh.all()
    assert layer.weight_ih.shape == (160, 10) and layer.weight_hh.shape == (160, 40)


class _Spy:
    """Stands in for torch._VF and records the weights each lstm call receives."""

    def __init__(self):
        self.calls = []

    def lstm(self, x, hx, weights, *args):
        self.calls.append([w.detach().clone() for w in weights])
        return torch._VF.lstm(x, hx, weights, *args)


def test_weight_drop_and_masks_compose(monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(model_mod, "_VF", spy)
    torch.manual_seed(1)
    layer = MaskedLSTM(8, 16, wdrop=0.5)
    mask = torch.rand(64, 16) > 0.5
    layer.mask_hh.copy_(mask)
    layer.mask_ih[:, 0] = False
    x, hx = torch.randn(4, 2, 8), (torch.zeros(1, 2, 16), torch.zeros(1, 2, 16))
    layer.train()
    layer(x, hx)
    layer(x, hx)
    (ih1, hh1, *_), (_, hh2, *_) = spy.calls
    assert (hh1[~mask] == 0).all() and (hh2[~mask] == 0).all(), "a masked weight survived weight drop"
    assert (ih1[:, 0] == 0).all()
    kept = hh1[mask] != 0
    assert 0.35 < kept.float().mean() < 0.65, "weight drop should drop about half of the live weights"
    assert torch.allclose(hh1[mask][kept], 2 * layer.weight_hh[mask][kept])  # inverted-dropout scaling
    assert not torch.equal(hh1, hh2), "DropConnect must draw a new mask every forward"
    # the weight drop mask is on the hidden-to-hidden matrix only
    assert torch.equal(ih1, layer.weight_ih * layer.mask_ih)
    # eval: no dropout at all, exactly the effective weights
    layer.eval()
    layer(x, hx)
    w_ih, w_hh = layer.effective_weights()
    assert torch.equal(spy.calls[-1][1], w_hh) and torch.equal(spy.calls[-1][0], w_ih)


def test_masked_weights_get_no_gradient_under_weight_drop():
    torch.manual_seed(2)
    layer = MaskedLSTM(8, 16, wdrop=0.5)
    layer.mask_hh[::2] = False
    out, _ = layer(torch.randn(5, 3, 8), (torch.randn(1, 3, 16), torch.randn(1, 3, 16)))
    out.pow(2).sum().backward()
    assert (layer.weight_hh.grad[::2] == 0).all()
    assert (layer.weight_hh.grad[1::2] != 0).any()


def test_locked_dropout_shares_one_mask_over_time():
    torch.manual_seed(3)
    x = torch.ones(9, 4, 50)
    y = locked_dropout(x, 0.3, training=True)
    assert torch.equal(y, y[:1].expand_as(y)), "variational dropout: same mask at every step"
    vals = y.unique()
    assert len(vals) == 2 and vals[0] == 0 and torch.isclose(vals[1], torch.tensor(1 / 0.7))
    assert torch.equal(locked_dropout(x, 0.3, training=False), x)
    assert torch.equal(locked_dropout(x, 0.0, training=True), x)


def test_embedding_dropout_drops_whole_symbols():
    torch.manual_seed(4)
    emb = nn.Embedding(20, 6)
    tokens = torch.arange(20).repeat(3, 1).t()  # each symbol three times
    out = embedded_dropout(emb, tokens, 0.5, training=True)
    zero_rows = (out == 0).all(-1)
    assert zero_rows.any() and not zero_rows.all()
    assert (zero_rows == zero_rows[:, :1]).all(), "a dropped symbol is dropped wherever it occurs"
    kept = ~zero_rows[:, 0]
    assert torch.allclose(out[kept, 0], 2 * emb.weight[kept])
    assert torch.equal(embedded_dropout(emb, tokens, 0.5, training=False), emb(tokens))


def test_language_model_shapes_tying_and_eval_determinism():
    cfg = ModelConfig(emsize=12, nhid=20, nlayers=3, dropout=0.3, dropouth=0.3, dropouti=0.3, dropoute=0.2, wdrop=0.4)
    torch.manual_seed(5)
    m = LSTMLanguageModel(17, cfg)
    assert m.decoder.weight is m.encoder.weight
    assert [(l.input_size, l.hidden_size) for l in m.layers] == [(12, 20), (20, 20), (20, 12)]
    tokens = torch.randint(0, 17, (6, 4))
    logits, hidden, extras = m(tokens, m.init_hidden(4))
    assert logits.shape == (6, 4, 17)
    assert [h.shape for h, c in hidden] == [(1, 4, 20), (1, 4, 20), (1, 4, 12)]
    assert extras["raw"].shape == extras["dropped"].shape == (6, 4, 12)
    assert not torch.equal(extras["raw"], extras["dropped"])  # output dropout in training
    m.eval()
    a = m(tokens, m.init_hidden(4))
    b = m(tokens, m.init_hidden(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2]["raw"], a[2]["dropped"])
    # carrying the hidden state across chunks equals one long pass
    whole = m(tokens, m.init_hidden(4))[0]
    first, h = m(tokens[:2], m.init_hidden(4))[:2]
    second = m(tokens[2:], h)[0]
    assert torch.allclose(torch.cat([first, second]), whole, atol=1e-6)


def _lstm_params(cfg, ntoken=50):
    with torch.device("meta"):
        m = LSTMLanguageModel(ntoken, cfg.model)
    return m, sum(p.numel() for p in m.parameters())


def test_paper_presets_have_the_papers_sizes():
    ptb = load_config("ptbc-paper")
    m, n = _lstm_params(ptb, 50)
    assert abs(n - 13.8e6) < 0.05e6, n
    en = load_config("enwik8-paper")
    m, n = _lstm_params(en, 205)
    per_layer = [sum(p.numel() for p in l.parameters()) / 1e6 for l in m.layers]
    assert abs(n - 47e6) < 0.3e6
    assert [round(x, 1) for x in per_layer] == [16.5, 27.1, 3.6]


@pytest.mark.parametrize("name,expected", [
    ("ptbc-paper", dict(emsize=200, nhid=1000, nlayers=3, dropouth=0.25, dropouti=0.1, dropout=0.1, dropoute=0.0,
                        wdrop=0.5, bptt=150, batch_size=128, lr=2e-3, wdecay=1.2e-6, epochs=500, when=(300, 400),
                        optimizer="adam", clip=0.25)),
    ("enwik8-paper", dict(emsize=400, nhid=1840, nlayers=3, dropouth=0.1, dropouti=0.1, dropout=0.4, dropoute=0.0,
                          wdrop=0.2, bptt=200, batch_size=128, lr=1e-3, wdecay=1.2e-6, epochs=50, when=(25, 35),
                          optimizer="adam", clip=0.25)),
])
def test_paper_presets_match_the_brief(name, expected):
    cfg = load_config(name)
    got = {k: getattr(cfg.model, k) if hasattr(cfg.model, k) else getattr(cfg.train, k) for k in expected}
    assert got == expected
