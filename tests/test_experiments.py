"""The frontier report's arithmetic (bench/experiments.py): Pareto front, baseline curves, targets."""

import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("experiments", Path(__file__).parents[1] / "bench" / "experiments.py")
experiments = sys.modules["experiments"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(experiments)


def rec(name, family, cells, bpc, width=256):
    return dict(name=name, family=family, packed_cells=cells, test_bpc=bpc, width=width)


RECORDS = [
    rec("dense-256-d1", "dense", 1600, 1.80),
    rec("dense-256-d0.5", "dense", 1600, 1.76),
    rec("dense-128", "dense", 400, 1.90, width=128),
    rec("dense-64", "dense", 100, 2.30, width=64),
    rec("bbs-0.8", "bank-balanced", 320, 1.93),
    rec("bbs-0.9", "bank-balanced", 160, 2.10),
    rec("cpcc-a", "CPCC, whole matrices", 390, 1.77),   # 4.10x fewer, +0.01: meets 4x
    rec("cpcc-b", "CPCC, whole matrices", 200, 1.95),   # 8x fewer, +0.19: misses 8x
    rec("cpcc-c", "CPCC, whole matrices", 420, 1.95),   # dominated by cpcc-a
]


def test_pareto_keeps_exactly_the_undominated_runs():
    assert experiments.pareto(RECORDS) == {"dense-256-d0.5", "cpcc-a", "bbs-0.8", "cpcc-b", "bbs-0.9", "dense-64"}


def test_reference_is_the_best_dropout_of_dense_3x256():
    assert experiments.reference(RECORDS)["name"] == "dense-256-d0.5"


def test_baseline_curve_interpolates_on_log_cells_and_never_extrapolates_a_trend():
    # halfway between 100 and 400 cells on a log axis is 200: halfway between 2.30 and 1.90
    assert experiments.curve_at(RECORDS, "dense", 200) == pytest.approx(2.10)
    assert experiments.curve_at(RECORDS, "dense", 400) == pytest.approx(1.90)
    assert experiments.curve_at(RECORDS, "dense", 1600) == pytest.approx(1.76)  # the better dropout, not d1
    assert experiments.curve_at(RECORDS, "dense", 50) is None  # below the smallest run: unknown
    # above the largest run: that run's BPC (it fits in more cells), not the trend continued
    assert experiments.curve_at(RECORDS, "bank-balanced", 400) == pytest.approx(1.93)
    assert experiments.curve_at(RECORDS, "dense", 3200) == pytest.approx(1.76)


def test_targets_read_the_records():
    text = "\n".join(experiments.targets(RECORDS))
    four, eight = (line for line in text.splitlines() if "fewer cells within" in line)
    assert "**met**" in four and "cpcc-a" in four and "+0.0100" in four
    assert "**not met**" in eight and "cpcc-b" in eight and "+0.1900" in eight
    # cpcc-b (1.95 on 200 cells) against dense (2.10) and bank-balanced (2.10 at 160, 1.93 at 320: 2.0453 at 200)
    line_b = next(l for l in text.splitlines() if l.strip().startswith("- cpcc-b"))
    assert "dense 2.1000 (better)" in line_b
    assert "bank-balanced 2.0453 (better)" in line_b
    assert "cpcc-c" not in text  # dominated: not on ccflow's front
    line_a = next(l for l in text.splitlines() if l.strip().startswith("- cpcc-a"))
    assert "bank-balanced 1.9300 (better)" in line_a  # above bbs-0.8's 320 cells: its 1.93
    tie = experiments.targets(RECORDS + [rec("cpcc-d", "CPCC, whole matrices", 160, 2.10002)])
    assert any(l.strip().startswith("- cpcc-d") and "bank-balanced 2.1000 (equal to 4 decimals)" in l for l in tie)


def test_targets_show_the_validation_gap_beside_the_test_gap():
    with_valid = [dict(r, valid_bpc=r["test_bpc"] + (0.03 if r["name"] == "cpcc-a" else 0.0)) for r in RECORDS]
    four = next(l for l in experiments.targets(with_valid) if l.startswith("- 4x"))
    assert "+0.0100 BPC" in four and "(+0.0400 on the validation split)" in four
    assert "validation" not in "\n".join(experiments.targets(RECORDS))  # nothing to show without valid_bpc


@pytest.mark.parametrize("preset", sorted(experiments.PRESETS))
def test_each_recommended_preset_is_the_run_that_measured_it(preset):
    """configs/small-cpcc.toml and small-wide.toml must stay the settings of the frontier runs the docs recommend."""
    from ccflow.config import load_config

    run = experiments.RUNS[experiments.PRESETS[preset]]
    measured = load_config("small", [*experiments.BUDGET, *run.overrides, f"train.epochs={experiments.EPOCHS}"])
    assert load_config(preset).to_dict() == measured.to_dict() | {"name": preset}


def test_a_recount_trains_nothing_and_cites_the_run_that_trained_its_model():
    """A ``model_of`` run is another run's model counted on the MX array: same command, its own family."""
    for name, run in experiments.RUNS.items():
        if run.model_of:
            source = experiments.RUNS[run.model_of]
            assert run.needs == run.model_of and source.model_of is None
            assert run.family != source.family == "bank-balanced"  # cells: MX array, not nonzeros
            assert experiments.command(name, Path("runs") / name) == experiments.command(run.model_of, Path("runs") / run.model_of)


def test_schedule_queues_what_is_needed_first_and_the_waiting_runs_last(tmp_path):
    """A recount waits for its model and holds a worker meanwhile: it must not stand before an independent run."""
    names = experiments.schedule(["d0.25-bbs-0.9-mx", "dense-256-d0.25"], tmp_path)
    assert names == ["d0.25-bbs-0.9", "dense-256-d0.25", "d0.25-bbs-0.9-mx"]
    (tmp_path / "d0.25-bbs-0.9").mkdir()
    (tmp_path / "d0.25-bbs-0.9" / "model.pt").touch()  # trained already: nothing to wait for, the order stands
    assert experiments.schedule(["d0.25-bbs-0.9-mx", "dense-256-d0.25"], tmp_path) == ["d0.25-bbs-0.9-mx", "dense-256-d0.25"]
    assert experiments.schedule(["d0.25-bbs-0.9", "d0.25-bbs-0.9-mx", "dense-256-d0.25"], tmp_path) == [
        "d0.25-bbs-0.9", "dense-256-d0.25", "d0.25-bbs-0.9-mx"]


def test_a_run_that_does_not_finish_stops_only_itself_and_what_needs_it(tmp_path, monkeypatch, capsys):
    """A killed training must not end the sweep with a traceback: the others are recorded, one line names the rest."""
    import subprocess

    import torch

    def train(name, out, corpus):
        if name == "d0.25-bbs-0.9":
            raise subprocess.CalledProcessError(-9, ["ccflow", "train"])

    monkeypatch.setattr(experiments, "train", train)
    monkeypatch.setattr(experiments, "measure", lambda name, out, corpus: {"name": name})
    monkeypatch.setattr(experiments, "plot", lambda records, folder: None)
    monkeypatch.setattr(experiments, "report", lambda records, doc, image: None)
    store = tmp_path / "results.json"
    monkeypatch.setattr(sys, "argv", ["experiments.py", "--only", "d0.25-bbs-0.9-mx,dense-256-d0.25,d0.25-bbs-0.9",
                                      "--out", str(tmp_path / "runs"), "--json", str(store), "--doc", str(tmp_path / "r.md")])
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as stop:
            experiments.main()
    finally:
        torch.set_num_threads(threads)  # main() sets one thread for the sweep; the other tests keep theirs
    assert str(stop.value) == ("2 run(s) did not finish: d0.25-bbs-0.9,d0.25-bbs-0.9-mx; rerun them with "
                               "--only d0.25-bbs-0.9,d0.25-bbs-0.9-mx (they resume from their last checkpoint)")
    assert [r["name"] for r in experiments.json.loads(store.read_text())] == ["dense-256-d0.25"]
    out = capsys.readouterr().out
    assert f"d0.25-bbs-0.9 did not finish (training exited -9): see {tmp_path / 'runs' / 'd0.25-bbs-0.9'}.log" in out
    assert "skipped d0.25-bbs-0.9-mx: d0.25-bbs-0.9 did not finish" in out
