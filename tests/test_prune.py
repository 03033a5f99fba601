"""Masks in training: the ramp, magnitude pruning, and the proof that a pruned weight stays pruned."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccflow.config import ConfigError, ModelConfig, load_config
from ccflow.model import LSTMLanguageModel
from ccflow.prune import (apply_schedule, bank_balanced_mask, enforce_masks, final_mask_epoch, layer_sparsity,
                          magnitude_mask, mask_optimizer_state, nonzero_weights, packing_stats, prune_layer,
                          step_epochs, target_sparsity)


def test_linear_ramp_starts_after_start_epoch_and_holds_the_target():
    cfg = load_config("tiny", ["prune.sparsity=0.8", "prune.start_epoch=3", "prune.ramp_epochs=4"])
    got = [round(target_sparsity(cfg.prune, e), 6) for e in range(0, 10)]
    assert got == [0, 0, 0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8, 0.8]
    assert final_mask_epoch(cfg) == max(6, *cfg.combine.epochs)
    assert final_mask_epoch(load_config("small")) == 0  # nothing scheduled


def test_cubic_ramp_in_steps_prunes_hard_early_and_ends_on_the_target():
    # the column-combining paper's recipe: 10 steps over the first half (epochs 1-20 of 40), cubic
    cfg = load_config("tiny", ["prune.sparsity=0.8", "prune.start_epoch=1", "prune.ramp_epochs=20",
                               "prune.steps=10", "prune.schedule=cubic", "combine.epochs=[]"])
    assert step_epochs(cfg.prune) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20] and final_mask_epoch(cfg) == 20
    got = [target_sparsity(cfg.prune, e) for e in range(0, 23)]
    want = {e: 0.8 * (1 - (1 - (e // 2) / 10) ** 3) for e in range(0, 23)}
    assert got == pytest.approx([want[min(e, 20)] for e in range(0, 23)])
    assert got[2] == pytest.approx(0.8 * 0.271) and got[3] == got[2] and got[20] == got[22] == pytest.approx(0.8)
    steps = np.diff([got[e] for e in step_epochs(cfg.prune)])
    assert (np.diff(steps) < 0).all(), "every step prunes less than the one before"
    with pytest.raises(ConfigError, match="prune.steps=21 must be in 0..prune.ramp_epochs=20"):
        load_config("tiny", ["prune.ramp_epochs=20", "prune.steps=21"])
    with pytest.raises(ConfigError, match="prune.schedule='cube' must be 'linear' or 'cubic'"):
        load_config("tiny", ["prune.schedule=cube"])


def test_alpha_scaled_sparsity_leaves_the_rest_to_combine_pruning():
    cfg = load_config("tiny", ["prune.sparsity=0.8", "prune.start_epoch=1", "prune.ramp_epochs=1",
                               "prune.alpha_scaled=true", "array.alpha=8", "combine.epochs=[]"])
    assert layer_sparsity(cfg, 1) == pytest.approx(0.8 * (1 - 1 / 8))
    model = _tiny_model(5)
    apply_schedule(model, cfg, 1, None)
    for layer in model.layers:
        n = layer.mask_ih.numel() + layer.mask_hh.numel()
        assert int(layer.mask_ih.sum() + layer.mask_hh.sum()) == n - round(0.7 * n)


def test_bank_balanced_mask_keeps_the_same_share_of_every_bank_of_every_row():
    torch.manual_seed(3)
    w = torch.randn(6, 70)  # banks of 16: 4 full and one of 6 columns per row
    m = bank_balanced_mask(w, torch.ones_like(w, dtype=torch.bool), 0.75, 16)
    for r in range(6):
        for a in range(0, 70, 16):
            bank_w, bank_m = w[r, a:a + 16].abs(), m[r, a:a + 16]
            assert int(bank_m.sum()) == len(bank_w) - round(0.75 * len(bank_w))  # 4 of 16, 2 of 6
            assert bank_w[bank_m].min() > bank_w[~bank_m].max(), "the largest of the bank survive"
    # never grows, and a weight already pruned stays pruned even if it is now the largest of its bank
    w2 = w.clone()
    w2[~m] = 100.0
    m2 = bank_balanced_mask(w2, m, 0.875, 16)
    assert not (m2 & ~m).any() and int(m2[:, :64].sum()) == 6 * 4 * 2
    assert torch.equal(bank_balanced_mask(w, m2, 0.5, 16), m2)
    # through the schedule: prune.method=bank_balanced on a layer's [W_ih | W_hh]
    cfg = load_config("tiny", ["prune.sparsity=0.5", "prune.start_epoch=1", "prune.ramp_epochs=1",
                               "prune.method=bank_balanced", "prune.bank_size=8", "combine.epochs=[]"])
    model = _tiny_model(6)
    apply_schedule(model, cfg, 1, None)
    for layer in model.layers:
        both = torch.cat([layer.mask_ih, layer.mask_hh], dim=1)
        assert (both.reshape(both.shape[0], -1, 8).sum(dim=2) == 4).all()


def test_l1_term_pulls_the_lstm_weights_toward_zero():
    from ccflow.train import train_step

    cfg = load_config("tiny")
    tokens = torch.randint(0, 12, (17, 4), generator=torch.Generator().manual_seed(0))
    sums = []
    for l1 in (0.0, 1e-2):
        model = _tiny_model(7)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_step(model, opt, list(model.parameters()), tokens[:-1], tokens[1:], model.init_hidden(4),
                   cfg.train, 0.1, l1)
        sums.append(sum(float(l.weight_ih.detach().abs().sum() + l.weight_hh.detach().abs().sum()) for l in model.layers))
    # SGD: the L1 gradient is l1 * sign(w), so every LSTM weight moves lr * l1 toward zero (before clipping)
    assert sums[1] < sums[0]


def test_combining_after_the_first_epoch_needs_an_explicit_override():
    with pytest.raises(ConfigError, match="allow_first_epoch=true"):
        load_config("tiny", ["combine.epochs=[1, 3]"])
    cfg = load_config("tiny", ["combine.epochs=[1, 3]", "combine.allow_first_epoch=true"])
    assert cfg.combine.epochs == (1, 3)


def test_magnitude_mask_drops_the_smallest_live_weights_and_never_grows():
    torch.manual_seed(0)
    w = torch.randn(40, 30)
    m0 = torch.ones_like(w, dtype=torch.bool)
    m1 = magnitude_mask(w, m0, 0.5)
    assert int(m1.sum()) == 600
    assert w.abs()[m1].min() >= w.abs()[~m1].max()
    # a weight already pruned stays pruned even if it is now the largest
    w2 = w.clone()
    w2[~m1] = 100.0
    m2 = magnitude_mask(w2, m1, 0.75)
    assert int(m2.sum()) == 300 and not (m2 & ~m1).any()
    # asking for less sparsity than there is changes nothing
    assert torch.equal(magnitude_mask(w, m2, 0.3), m2)


def test_prune_layer_treats_ih_and_hh_as_one_matrix():
    torch.manual_seed(1)
    m = LSTMLanguageModel(10, ModelConfig(emsize=8, nhid=12, nlayers=3))
    layer = m.layers[0]
    with torch.no_grad():
        layer.weight_ih.mul_(0.01)  # the input half is all small: it goes first
        layer.weight_hh.abs_().add_(0.1)
    prune_layer(layer, 0.3)
    total = layer.mask_ih.numel() + layer.mask_hh.numel()
    assert int(layer.mask_ih.sum() + layer.mask_hh.sum()) == total - round(0.3 * total)
    assert int((~layer.mask_ih).sum()) == round(0.3 * total) and layer.mask_hh.all()


def test_global_scope_prunes_the_total_by_one_threshold_over_every_matrix():
    cfg = load_config("tiny", ["prune.sparsity=0.6", "prune.start_epoch=1", "prune.ramp_epochs=2",
                               "prune.scope=global", "combine.epochs=[]"])
    model = _tiny_model(7)
    with torch.no_grad():
        model.layers[0].weight_hh.mul_(0.2)  # one matrix of small weights: the global threshold takes most of it
    total = sum(l.mask_ih.numel() + l.mask_hh.numel() for l in model.layers)
    for epoch, s in ((1, 0.3), (2, 0.6)):
        # (weight, mask) of every matrix before the step: pruning zeroes the weights it cuts
        before = [(p.detach().clone(), m.clone()) for l in model.layers
                  for p, m in ((l.weight_ih, l.mask_ih), (l.weight_hh, l.mask_hh))]
        apply_schedule(model, cfg, epoch, None)
        after = [m for l in model.layers for m in (l.mask_ih, l.mask_hh)]
        assert sum(int(m.sum()) for m in after) == total - round(s * total)
        kept = torch.cat([w[m].abs() for (w, _), m in zip(before, after)])
        cut = torch.cat([w[mb & ~m].abs() for (w, mb), m in zip(before, after)])
        assert len(cut) and kept.min() >= cut.max(), "one threshold over all matrices"
        assert not any((m & ~mb).any() for (_, mb), m in zip(before, after)), "masks only shrink"
    share = [float(l.mask_hh.float().mean()) for l in model.layers]
    assert share[0] < 0.1 < min(share[1:]), f"the small matrix lost most, the others less than 60%: {share}"
    with pytest.raises(ConfigError, match="prune.scope='global' needs prune.method='magnitude'"):
        load_config("tiny", ["prune.scope=global", "prune.method=bank_balanced"])
    with pytest.raises(ConfigError, match="prune.scope='layer' must be 'matrix' or 'global'"):
        load_config("tiny", ["prune.scope=layer"])


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return LSTMLanguageModel(12, ModelConfig(emsize=8, nhid=16, nlayers=3, dropout=0.1, dropouth=0.1,
                                             dropouti=0.1, wdrop=0.3))


def _step(model, opt, tokens, enforce=True):
    opt.zero_grad()
    logits, _, _ = model(tokens[:-1], model.init_hidden(tokens.size(1)))
    F.cross_entropy(logits.reshape(-1, 12), tokens[1:].reshape(-1)).backward()
    opt.step()
    if enforce:
        enforce_masks(model)


def _masked_raw_values(model):
    return torch.cat([torch.cat([l.weight_ih[~l.mask_ih], l.weight_hh[~l.mask_hh]]) for l in model.layers])


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.Adam(p, lr=3e-2, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, weight_decay=1e-2),
], ids=["adam+wd", "sgd+momentum+wd"])
def test_a_pruned_weight_never_comes_back(make_opt):
    model = _tiny_model()
    opt = make_opt(model.parameters())
    tokens = torch.randint(0, 12, (20, 4), generator=torch.Generator().manual_seed(0))
    for _ in range(5):  # build up momentum everywhere
        _step(model, opt, tokens)
    for layer in model.layers:
        prune_layer(layer, 0.6)
    enforce_masks(model)  # no mask_optimizer_state: stale momentum stays in the optimizer
    masks = [(l.mask_ih.clone(), l.mask_hh.clone()) for l in model.layers]
    live = sum(int(a.sum() + b.sum()) for a, b in masks)
    for _ in range(15):
        _step(model, opt, tokens)
        assert (_masked_raw_values(model) == 0).all(), "an optimizer step resurrected a pruned weight"
        assert nonzero_weights(model) == live, "nonzero count must equal the live mask count exactly"
    for layer, (a, b) in zip(model.layers, masks):
        assert torch.equal(layer.mask_ih, a) and torch.equal(layer.mask_hh, b)

    # the control: without enforcement the same optimizer moves pruned raw weights off zero,
    # so the test above would catch a missing enforce_masks
    _step(model, opt, tokens, enforce=False)
    assert (_masked_raw_values(model) != 0).any()
    assert nonzero_weights(model) == live  # ... yet the forward pass still never sees them


def test_masking_the_optimizer_state_removes_stale_momentum():
    model = _tiny_model(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    tokens = torch.randint(0, 12, (16, 3), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        _step(model, opt, tokens)
    for layer in model.layers:
        prune_layer(layer, 0.5)
    enforce_masks(model)
    mask_optimizer_state(opt, model)
    for layer in model.layers:
        state = opt.state[layer.weight_hh]
        assert (state["exp_avg"][~layer.mask_hh] == 0).all() and (state["exp_avg_sq"][~layer.mask_hh] == 0).all()
        assert (state["exp_avg"][layer.mask_hh] != 0).any()
    # with clean state even a step without enforcement leaves pruned weights at exactly zero
    _step(model, opt, tokens, enforce=False)
    assert (_masked_raw_values(model) == 0).all()


def test_apply_schedule_prunes_on_the_ramp_and_only_shrinks():
    cfg = load_config("tiny", ["prune.sparsity=0.6", "prune.start_epoch=2", "prune.ramp_epochs=3",
                               "combine.epochs=[]"])
    model = _tiny_model(2)
    total = sum(l.weight_ih.numel() + l.weight_hh.numel() for l in model.layers)
    counts = []
    prev = None
    for epoch in range(1, 7):
        with torch.no_grad():  # training moves weights between schedule steps
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        enforce_masks(model)
        packings, changed = apply_schedule(model, cfg, epoch, None)
        assert changed == (2 <= epoch <= 4)
        assert packings is None
        masks = torch.cat([torch.cat([l.mask_ih.flatten(), l.mask_hh.flatten()]) for l in model.layers])
        if prev is not None:
            assert not (masks & ~prev).any(), "masks only ever shrink"
        prev = masks
        counts.append(nonzero_weights(model))
    expected = [total] + [sum(round((1 - s) * (l.weight_ih.numel() + l.weight_hh.numel())) for l in model.layers)
                          for s in (0.2, 0.4, 0.6, 0.6, 0.6)]
    assert counts == expected
    nnz, cells, util = packing_stats(model, None, cfg.array)
    decoder = model.encoder.weight.numel()  # tied, dense, executed like every other matrix
    assert nnz == counts[-1] + decoder and util == pytest.approx(nnz / cells)
    # never combined: conflict-free packing in blocks of the array height, within the bounds of its definition
    assert nnz / cfg.array.alpha <= cells < total + decoder


# --- column combining (ccflow.combine) -------------------------------------------------


def _combine():
    return pytest.importorskip("ccflow.combine", reason="ccflow.combine not available yet")


def test_combine_step_ands_the_packing_mask_into_the_layer_masks():
    combine = _combine()
    cfg = load_config("tiny", ["prune.sparsity=0.7", "prune.start_epoch=1", "prune.ramp_epochs=1",
                               "combine.epochs=[2]", "combine.gamma=0.5", "array.rows=16", "array.alpha=4"])
    model = _tiny_model(3)
    apply_schedule(model, cfg, 1, None)
    before = [(l.mask_ih.clone(), l.mask_hh.clone()) for l in model.layers]
    nnz_before = nonzero_weights(model)
    packings, changed = apply_schedule(model, cfg, 2, None)
    assert changed and sorted(packings) == [0, 1, 2]
    assert nonzero_weights(model) <= nnz_before
    total_nnz = 0
    for l, layer in enumerate(model.layers):
        p = packings[l]
        w_ih, w_hh = layer.effective_weights()
        matrix = combine.lstm_matrix(w_ih.detach().numpy(), w_hh.detach().numpy())
        assert np.array_equal(matrix != 0, np.asarray(p.mask)), "live weights are exactly the packing's kept weights"
        assert p.nnz == int((matrix != 0).sum())
        a, b = before[l]
        assert not (layer.mask_ih & ~a).any() and not (layer.mask_hh & ~b).any()
        ih, hh = combine.lstm_unmatrix(np.asarray(p.mask), layer.input_size)
        assert np.array_equal(ih, layer.mask_ih.numpy() & ih) and np.array_equal(hh, layer.mask_hh.numpy() & hh)
        # every group keeps at most one weight per row when gamma... bounded by the packing itself
        for start, stop, groups in p.blocks:
            assert stop - start <= cfg.array.rows
            assert all(len(g) <= cfg.array.alpha for g in groups)
        total_nnz += p.nnz
    nnz, cells, util = packing_stats(model, packings, cfg.array)
    decoder = model.encoder.weight.numel()
    assert nnz == total_nnz + decoder
    # row-split packings: every group of a block has a nonzero there, so the executed cells are the packings' own
    assert cells == sum(p.packed_cells for p in packings.values()) + decoder
    assert util == pytest.approx(nnz / cells)


def test_row_split_follows_the_array_height():
    _combine()
    for split, blocks in ((True, [4, 4, 2]), (False, [1, 1, 1])):  # 64, 64 and 32 rows in blocks of 16
        cfg = load_config("tiny", ["array.rows=16", f"combine.row_split={'true' if split else 'false'}"])
        m = _tiny_model(4)
        for layer in m.layers:
            prune_layer(layer, 0.7)
        packings, _ = apply_schedule(m, cfg, cfg.combine.epochs[0], None)
        assert [len(p.blocks) for p in packings.values()] == blocks
        assert all(p.alpha == cfg.array.alpha and p.gamma == cfg.combine.gamma for p in packings.values())
        assert all(p.row_block == (16 if split else None) for p in packings.values())
