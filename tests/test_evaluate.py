"""python -m nenya.evaluate: eval_metrics.json and figures of a trained run, on its own or another data set."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import knn_by_hand
from nenya.data.hdf5 import HDF5Images
from nenya.data.synthetic import make_hyperspectral
from nenya.evaluate import cli as evaluate_cli
from nenya.evaluate import evaluate_run
from nenya.evaluate import load_run
from nenya.train import main as train_main
from test_methods_mae import BANDS, SIZE, mae_opts

FIGURES = ("mae_reconstruction.png", "mae_band_mse.png", "mae_spectra.png")


@pytest.fixture
def mae_run(tmp_path):
    """Folder of a trained two-epoch MAE run (tmp_path/cubes.h5, train/valid)."""
    opts = mae_opts(tmp_path)
    metrics = train_main(opts, verbose=False)
    return tmp_path / "models" / "mae", metrics


def _fails(capsys, argv, *expected):
    assert evaluate_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("nenya: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    for text in expected:
        assert text in errors[0], (text, errors[0])


def test_evaluate_writes_metrics_and_figures_and_refuses_to_overwrite(mae_run, tmp_path, capsys):
    folder, train_metrics = mae_run
    assert evaluate_cli([str(folder)]) == 0
    assert "wrote" in capsys.readouterr().out
    path = folder / "eval" / "eval_metrics.json"
    record = json.loads(path.read_text())
    assert record["run"] == str(folder.resolve()) and record["checkpoint"] == "best"
    assert record["data"] == str((tmp_path / "cubes.h5").resolve()) and record["key"] == "valid"
    assert record["checkpoint_file"].endswith("best.pth") and record["items"] == 4
    metrics = record["metrics"]
    for name in ("mse", "mse_masked", "ssim", "psnr_masked", "sam_masked", "baseline_mse_masked", "loss",
                 "loss_mse", "loss_sam", "loss_variance", "loss_range"):
        assert np.isfinite(metrics[name]), name
    # same masks, data and weights as the validation that picked best.pth
    assert metrics["mse_masked"] == pytest.approx(train_metrics["best"]["value"], rel=1e-6)
    for name in FIGURES:
        assert (folder / "eval" / name).stat().st_size > 1000, name

    before = path.read_bytes()
    _fails(capsys, [str(folder)], "eval_metrics.json already exists", "--overwrite")
    assert path.read_bytes() == before
    assert evaluate_cli([str(folder), "--overwrite", "--checkpoint", "last"]) == 0
    assert json.loads(path.read_text())["checkpoint"] == "last"


def test_evaluate_on_another_file_and_key(mae_run, tmp_path):
    folder, _ = mae_run
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["test"] = make_hyperspectral(3, bands=BANDS, size=SIZE, seed=7)
    out = tmp_path / "eval_other"
    record = evaluate_run(str(folder), data=str(other), key="test", out=str(out))
    assert record["data"] == str(other.resolve()) and record["key"] == "test" and record["items"] == 3
    assert json.loads((out / "eval_metrics.json").read_text())["metrics"] == pytest.approx(record["metrics"])
    for name in FIGURES:
        assert (out / name).exists(), name


def test_evaluate_user_errors(mae_run, tmp_path, capsys):
    folder, _ = mae_run
    _fails(capsys, [str(tmp_path / "nothing")], "is not a nenya run folder")
    _fails(capsys, [str(folder), "--data", str(tmp_path / "missing.h5")], "missing.h5 does not exist", "--data")
    _fails(capsys, [str(folder), "--key", "nope"], "has no dataset 'nope' (--key)", "train, valid")
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as handle:
        handle["valid"] = np.zeros((2, BANDS + 2, SIZE, SIZE), dtype=np.float32)
        handle["small"] = np.zeros((2, BANDS, 8, 8), dtype=np.float32)
    _fails(capsys, [str(folder), "--data", str(wrong)], "nchannels=10", "12 channels")
    _fails(capsys, [str(folder), "--data", str(wrong), "--key", "small"], "8x8 cubes", "16x16")
    _fails(capsys, [str(folder), "--checkpoint", "ckpt_epoch_9"], "ckpt_epoch_9.pth does not exist")
    assert not (folder / "eval" / "eval_metrics.json").exists()


def test_evaluate_of_a_simclr_run_is_the_loss_and_leave_one_out_knn(tiny_run):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    record = evaluate_run(str(folder))
    assert record["key"] == "valid" and record["items"] == 24
    assert set(record["metrics"]) == {"loss", "knn_acc_loo", "retrieval_top1"} and record["metrics"]["loss"] > 0
    opt, method, model = load_run(str(folder))
    plain = HDF5Images(str(folder.parent.parent / "images.h5"), "valid")
    with torch.no_grad():  # a direct forward pass of every un-augmented validation image
        features = model.eval().encode(torch.stack([plain[i][0] for i in range(len(plain))]))
    labels = plain.labels
    predicted = knn_by_hand(features.numpy(), labels, features.numpy(), opt.knn_k, leave_one_out=True)
    assert record["metrics"]["knn_acc_loo"] == pytest.approx(np.mean(predicted == labels))
    assert (folder / "eval" / "eval_metrics.json").exists() and (folder / "eval" / "embedding.png").exists()


@pytest.mark.slow
def test_module_entry_point(mae_run, tmp_path):
    folder, _ = mae_run
    done = subprocess.run([sys.executable, "-m", "nenya.evaluate", str(folder), "--out", str(tmp_path / "e")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mse_masked" in done.stdout and (tmp_path / "e" / "eval_metrics.json").exists()
