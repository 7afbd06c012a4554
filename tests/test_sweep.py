"""nenya.sweep: one run folder per experiment, the summary, skipping finished ones, --force, --only, failures."""

import csv
import json
import os

import h5py
import pytest

import nenya.train
from conftest import fails_with, write_images_h5, write_opts
from nenya.sweep import cli as sweep_cli
from nenya.sweep import experiment_overrides
from nenya.sweep import main as sweep_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_file(tmp_path, experiments):
    """A tiny SimCLR sweep file (16 training images, batch 16, one epoch by default)."""
    write_images_h5(tmp_path / "images.h5", n_train=16, n_valid=12)
    return write_opts(tmp_path / "grid.json", method="simclr", model="resnet18", images_file="images.h5",
                      data_folder=str(tmp_path), model_root=str(tmp_path / "models"), batch_size_train=16,
                      batch_size_valid=16, epochs=1, feat_dim=16, knn_k=3, print_freq=100, monitor="loss",
                      experiments=experiments)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def counted_train(monkeypatch):
    """Count nenya.train.main calls by experiment; the experiment named 'crash' crashes (not a NenyaError)."""
    calls = []
    real = nenya.train.main

    def main(path, overrides=None, **kwargs):
        calls.append(overrides["model_name"].split("/")[-1])
        if overrides["model_name"].endswith("/crash"):
            raise RuntimeError("boom")
        return real(path, overrides=overrides, **kwargs)

    monkeypatch.setattr(nenya.train, "main", main)
    return calls


def test_sweep_runs_each_experiment_in_its_folder_and_reports_failures_in_their_rows(tmp_path, capsys, counted_train):
    experiments = [{"name": "a", "description": "two epochs", "epochs": 2},
                   {"name": "b", "description": "lower rate", "learning_rate": 0.01},
                   {"name": "bad", "description": "impossible rate", "learning_rate": -1},
                   {"name": "crash", "description": "a crash"}]
    opts = sweep_file(tmp_path, experiments)
    error = fails_with(capsys, [opts, "feat_dim=8"], "2 of 4 experiments failed (bad, crash)", cli=sweep_cli)
    folder = tmp_path / "models" / "grid"  # no model_name in the file: the sweep is named after it
    assert str(folder / "experiment_summary.csv") in error and (folder / "summary.png").stat().st_size > 0
    rows = read_rows(folder / "experiment_summary.csv")
    assert [r["name"] for r in rows] == ["a", "b", "bad", "crash"] and counted_train == ["a", "b", "bad", "crash"]
    assert [r["status"] for r in rows] == ["finished", "finished", "failed", "failed"]
    assert "'learning_rate' is -1" in rows[2]["message"] and rows[3]["message"] == "RuntimeError: boom"
    assert rows[0]["description"] == "two epochs" and [r["epochs_run"] for r in rows] == ["2", "1", "0", "0"]
    for row in rows[:2]:
        run = folder / row["name"]
        options = json.loads((run / "opts.json").read_text())
        assert options["feat_dim"] == 8 and options["model_name"] == f"grid/{row['name']}"  # key=value: every one
        assert options["learning_rate"] == (0.01 if row["name"] == "b" else 0.05)
        metrics = json.loads((run / "metrics.json").read_text())
        assert int(row["best_epoch"]) == metrics["best"]["epoch"] and row["monitor"] == "loss"
        assert float(row["best_value"]) == metrics["best"]["value"] and float(row["wall_time_s"]) > 0
        with h5py.File(run / "losses_valid.h5") as handle:  # the best epoch's validation metrics, from the curves
            at = list(handle["epoch"][:]).index(metrics["best"]["epoch"])
            assert float(row["valid_knn_acc"]) == float(handle["knn_acc_valid"][at])
            assert float(row["valid_loss"]) == float(handle["loss_valid"][at])
    assert "experiment 'crash' crashed:\nTraceback" in (folder / "sweep.log").read_text()  # the whole traceback

    # again: the finished ones are skipped (not trained), the failed ones tried again
    counted_train.clear()
    fails_with(capsys, [opts, "feat_dim=8"], "2 of 4 experiments failed", cli=sweep_cli)
    assert counted_train == ["bad", "crash"]
    again = read_rows(folder / "experiment_summary.csv")
    assert [r["status"] for r in again] == ["finished", "finished", "failed", "failed"]
    assert again[0]["message"].startswith("skipped") and again[0]["wall_time_s"] == rows[0]["wall_time_s"]

    # --only a --force: a alone is trained again from scratch; the other rows stay as they were
    counted_train.clear()
    before = (folder / "a" / "training.log").read_text()
    assert sweep_cli([opts, "--only", "a", "--force", "feat_dim=8"]) == 0
    assert counted_train == ["a"] and (folder / "a" / "training.log").read_text().count("training simclr") == 1
    assert (folder / "a" / "training.log").read_text() != before
    last = read_rows(folder / "experiment_summary.csv")
    assert [r["status"] for r in last] == ["finished", "finished", "failed", "failed"] and last[0]["message"] == ""
    assert last[2]["message"] == again[2]["message"]


def test_an_interrupted_experiment_is_resumed(tmp_path, counted_train):
    opts = sweep_file(tmp_path, [{"name": "a", "epochs": 2}])
    nenya.train.main(opts, overrides={"experiments": None, "model_name": "grid/a", "epochs": 1}, verbose=False)
    os.remove(tmp_path / "models" / "grid" / "a" / "metrics.json")  # as if it had stopped after epoch 1
    counted_train.clear()
    rows = sweep_main(opts, verbose=False)
    assert counted_train == ["a"] and rows[0]["status"] == "finished" and rows[0]["epochs_run"] == 2
    log = (tmp_path / "models" / "grid" / "a" / "training.log").read_text()
    assert "resuming" in log and "after epoch 1" in log


def test_sweep_file_mistakes_are_one_line_errors(tmp_path, capsys):
    opts = sweep_file(tmp_path, [{"name": "baseline"}, {"name": "higher_lr", "learning_rate": 0.1}])
    fails_with(capsys, [opts, "--only", "baselin"], "no experiment named 'baselin'", "did you mean 'baseline'",
               cli=sweep_cli)
    for experiments, text in (([{"name": "a"}, {"name": "a"}], "two experiments are named 'a'"),
                              ([{"description": "no name"}], "experiment 1 needs a \"name\""),
                              ([{"name": "a/b"}], "experiment 1 needs a \"name\""),
                              ([{"name": "a", "model_name": "x"}], "experiment 'a' sets 'model_name'"),
                              ([], "non-empty list")):
        fails_with(capsys, [sweep_file(tmp_path, experiments)], text, cli=sweep_cli)
    plain = write_opts(tmp_path / "plain.json", epochs=1)
    fails_with(capsys, [plain], "has no 'experiments' list", cli=sweep_cli)
    bad = sweep_file(tmp_path, [{"name": "ok"}, {"name": "typo", "learnig_rate": 0.1}])
    fails_with(capsys, [bad, "--dry-run"], "1 of 2 experiments have invalid options (typo)", "'learnig_rate'",
               "did you mean 'learning_rate'", cli=sweep_cli)
    assert not (tmp_path / "models").exists()  # nothing written by any of these


def test_rosette_sweep_file_dry_runs(capsys):
    rows = sweep_main(os.path.join(ROOT, "opts", "rosette_sweep.json"), dry=True)
    assert [r["name"] for r in rows] == ["baseline_test", "baseline_full", "higher_lr", "larger_batch",
                                         "no_augmentation"]
    assert all(r["status"] in ("would train", "would skip (finished)") for r in rows)


def test_options_apply_shared_then_the_experiment_then_the_command_line():
    changes = experiment_overrides("grid", {"name": "a", "description": "d", "epochs": 2, "learning_rate": 0.1},
                                   {"epochs": 1})
    assert changes == {"epochs": 1, "learning_rate": 0.1, "experiments": None, "model_name": "grid/a"}
