"""CNNs: shapes, batch-norm folding, the matrices pruning and packing see, training with the schedule."""

import numpy as np
import pytest
import torch

from ccflow.cnn import Cnn, CnnError, FloatCnn, conv2d, im2col, weight_layers
from ccflow.combine import conv2d_matrix
from ccflow.prune import masked_matrices, prune_layer


@pytest.mark.parametrize("arch,shape,weights", [
    ("lenet5", (1, 8, 8), [(6, 1, 5, 5), (16, 6, 5, 5), (120, 64), (84, 120), (10, 84)]),
    ("lenet5", (1, 28, 28), [(6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]),  # the paper's MNIST net
    ("vgg-small", (3, 32, 32), [(32, 3, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3),
                                (128, 128, 3, 3), (10, 2048)]),
])
def test_architectures_have_the_documented_layers(arch, shape, weights):
    model = Cnn(arch, shape, 10)
    assert [tuple(l.weight.shape) for l in weight_layers(model)] == weights
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_an_input_too_small_is_refused():
    with pytest.raises(CnnError, match="too small"):
        Cnn("vgg-small", (3, 4, 4), 10)
    with pytest.raises(CnnError, match="choose one of lenet5"):
        Cnn("resnet-1000", (1, 8, 8), 10)


@pytest.mark.parametrize("arch,shape", [("lenet5", (1, 8, 8)), ("vgg-small", (3, 16, 16))])
def test_folded_network_computes_what_the_torch_model_computes(arch, shape):
    torch.manual_seed(0)
    model = Cnn(arch, shape, 10)
    for layer in weight_layers(model):  # some pruning, so folding must keep zeros zero
        layer.mask &= torch.rand(layer.mask.shape) > 0.5
    model.train()
    x = torch.rand(32, *shape)
    for _ in range(3):  # move the batch-norm statistics away from their initial values
        model(x)
    model.eval()
    with torch.no_grad():
        ref = model(x.double().float()).double().numpy()
    folded = FloatCnn.from_torch(model)
    assert not any(s.kind == "bn" for s in folded.stages)
    np.testing.assert_allclose(folded.forward(x.double().numpy()), ref, atol=1e-4)
    for layer, stage in zip(weight_layers(model), folded.weight_stages):
        assert np.array_equal(stage.weight == 0, ~layer.mask.numpy() | (layer.weight.detach().numpy() == 0))


def test_conv_is_the_conv_matrix_times_every_input_vector():
    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=(2, 3, 7, 6)), rng.normal(size=(5, 3, 3, 3)), rng.normal(size=5)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1).numpy()
    np.testing.assert_allclose(conv2d(x, w, b, 1), ref, atol=1e-12)
    cols = im2col(x, 3, 1)
    assert cols.shape == (2, 7 * 6, 27)
    np.testing.assert_allclose(cols[0] @ conv2d_matrix(w).T + b, ref[0].reshape(5, -1).T, atol=1e-12)


def test_every_weight_layer_is_one_prunable_matrix():
    torch.manual_seed(0)
    model = Cnn("lenet5", (1, 8, 8), 10)
    mats = masked_matrices(model)
    assert [mm.array_matrix().shape for mm in mats] == [(6, 25), (16, 150), (120, 64), (84, 120), (10, 84)]
    prune_layer(mats[1], 0.75)
    layer = weight_layers(model)[1]
    assert int(layer.mask.sum()) == round(0.25 * layer.mask.numel())
    kept = layer.weight.detach().abs()[layer.mask]
    assert kept.min() >= layer.weight.detach().abs()[~layer.mask].max()  # the largest weights stay


# --- training on the built-in digits, through the LSTM's schedule and the packing stage ----------------


def _cfg(*overrides):
    from ccflow.config import load_config

    return load_config("lenet5", ["train.epochs=4", "train.max_batches=20", "prune.start_epoch=1",
                                  "prune.ramp_epochs=2", "combine.epochs=[3]", "combine.gamma=0.25", *overrides])


def test_training_prunes_combines_and_logs_the_packing_stages_figures(tmp_path):
    import csv

    from ccflow.checkpoint import load_model
    from ccflow.pack import float_model, pack_model
    from ccflow.train import run_training

    cfg = _cfg()
    run_training(cfg, tmp_path, threads=1)
    trained = load_model(tmp_path / "model.pt")
    assert trained.epoch == 4 and set(trained.packings) == {0, 1, 2, 3, 4}
    for layer in weight_layers(trained.model):
        assert not layer.weight[~layer.mask].any()  # masked weights are zero
        assert layer.mask.float().mean() < 0.45  # pruned to 60%, then combine-pruned
    packed = pack_model(float_model(trained.model), cfg.array, trained.packings)  # the packing fits the weights
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert int(rows[-1]["packed_cells"]) == packed.packed_cells < packed.dense_cells
    assert int(rows[-1]["nonzero_weights"]) == packed.nnz
    assert int(rows[2]["packed_cells"]) < int(rows[1]["packed_cells"])  # the combine at epoch 3 packed tighter
    assert float(rows[-1]["valid_accuracy"]) > 0.5  # it learns (10 classes: chance is 0.1)


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    from ccflow.checkpoint import read_checkpoint
    from ccflow.train import run_training

    soft = ("combine.soft_epochs=1", "prune.l1=1e-4", "model.dropout=0.2")
    run_training(_cfg(*soft), tmp_path / "straight", threads=1)
    run_training(_cfg("train.epochs=2", *soft), tmp_path / "split", threads=1)  # stops after epoch 2
    assert read_checkpoint(tmp_path / "split" / "checkpoint.pt")["train"]["doomed"] is not None  # mid soft phase
    run_training(_cfg(*soft), tmp_path / "split", resume=True, threads=1)
    a, b = (read_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("straight", "split"))
    assert a["packings"] == b["packings"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    strip = lambda p: [l.rsplit(",", 5)[0].split(",")[:7] for l in p.read_text().splitlines()]  # noqa: E731
    assert strip(tmp_path / "straight" / "log.csv") == strip(tmp_path / "split" / "log.csv")


@pytest.mark.parametrize("setting,name", [("train.final_dropout=0", "train.final_dropout"),
                                          ('train.distill="teacher.pt"', "train.distill")])
def test_lstm_only_training_settings_are_refused_for_a_cnn_in_one_line(tmp_path, capsys, setting, name):
    from ccflow.cli import main

    out = tmp_path / "run"
    assert main(["train", "--config", "lenet5", "--out", str(out), "--set", setting, "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ccflow train: error: {name} is for the LSTM only")
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written


def test_eval_reports_accuracy_and_refuses_other_images(tmp_path, capsys):
    from ccflow.cli import main
    from ccflow.train import run_training

    run_training(_cfg("train.epochs=1", "prune.sparsity=0", "combine.epochs=[]"), tmp_path, threads=1)
    assert main(["eval", str(tmp_path / "model.pt")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    rec = np.zeros((2, 3073), dtype=np.uint8)
    for n in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (cifar / n).write_bytes(rec.tobytes())
    assert main(["eval", str(tmp_path / "model.pt"), "--data", str(cifar)]) == 2
    err = capsys.readouterr().err
    assert "takes (1, 8, 8) images" in err and len(err.strip().splitlines()) == 1
    # the packing stage reads CNNs too
    assert main(["combine", str(tmp_path / "model.pt")]) == 0
    out = capsys.readouterr().out
    assert "conv1: 16 x 150" in out and "once per image" in out


# --- fixed point: the integer golden model of the CNN on the MX array ---------------------------------


def _float_cnn(arch="lenet5", shape=(1, 8, 8), prune=0.6, seed=0):
    torch.manual_seed(seed)
    model = Cnn(arch, shape, 10)
    for layer in weight_layers(model):
        layer.mask &= torch.rand(layer.mask.shape) > prune
    model.train()
    for _ in range(2):
        model(torch.rand(16, *shape))
    model.eval()
    return FloatCnn.from_torch(model)


def _array(**formats):
    from ccflow.arrayconfig import ArrayConfig, NumberFormats

    return ArrayConfig(rows=8, cols=4, alpha=4, formats=NumberFormats(act_frac=8, **formats))


@pytest.mark.parametrize("arch,shape,gamma", [("lenet5", (1, 8, 8), 0.5), ("vgg-small", (3, 8, 8), 0.0)])
def test_integer_cnn_tracks_the_float_cnn_and_its_tiles_hold_the_packed_weights(arch, shape, gamma):
    from ccflow.cnn_quantize import CnnGolden, quantize_cnn
    from ccflow.pack import pack_model

    fm, packings = _float_cnn(arch, shape).combined(4, gamma, 8)
    array = _array()
    design = quantize_cnn(fm, array, packings)
    assert design.packed_cells == pack_model(fm, array, packings).packed_cells < design.dense_cells
    x = np.random.default_rng(1).random((6, *shape))
    golden = CnnGolden(design)
    got = golden.run(x) * 2.0 ** -array.formats.logit_frac
    ref = fm.forward(x)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max() + 0.02
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 5 / 6
    # the tiles hold exactly round(w * 2**e) of every packed weight, each once
    for m, stage in zip(design.matrices, fm.weight_stages):
        w = np.zeros((m.n_blocks * array.rows, m.in_size), dtype=np.int64)
        for t in range(m.tile_start, m.tile_start + m.n_tiles):
            for c in range(array.cols):
                block = design.tile_block[t] - m.block_start + (c >= design.tile_split[t])
                for r in range(array.rows):
                    if design.tile_weight[t, r, c]:
                        col = design.tile_addr[t, c, design.tile_sel[t, r, c]]
                        assert w[block * array.rows + r, col] == 0
                        w[block * array.rows + r, col] = design.tile_weight[t, r, c]
        shift = design.block_shift[m.block_start:m.block_start + m.n_blocks].reshape(-1)[: m.rows]
        out_frac = array.formats.logit_frac if m is design.matrices[-1] else array.formats.act_frac
        e = shift - array.formats.act_frac + out_frac
        np.testing.assert_array_equal(w[: m.rows], np.rint(stage.matrix * 2.0 ** e[:, None]))


def test_integer_cnn_tile_replay_equals_the_matrix_product_and_saturation_is_counted():
    from ccflow.cnn_quantize import CnnGolden, quantize_cnn

    fm, packings = _float_cnn(prune=0.3, seed=2).combined(4, 0.25, 8)
    x = np.random.default_rng(3).random((4, 1, 8, 8)) * 2.0
    for formats, scale in (({}, 1.0), ({"acc_bits": 24}, 60.0)):  # large pixels on a narrow accumulator saturate
        design = quantize_cnn(fm, _array(**formats), packings)
        fast, tiles = CnnGolden(design), CnnGolden(design)
        tiles.array._dense = {}
        np.testing.assert_array_equal(fast.run(x * scale), tiles.run(x * scale))
        assert fast.sat.by_site == tiles.sat.by_site
        assert ("accumulator" in fast.sat.by_site) == (scale > 1)
    design = quantize_cnn(fm, _array(act_bits=10, logit_frac=4, lut_frac=4), packings)  # Q1.8: outputs saturate
    golden = CnnGolden(design)
    golden.run(x)
    assert golden.sat.total > 0 and "input" in golden.sat.by_site  # pixels up to 2.0 do not fit Q1.8
