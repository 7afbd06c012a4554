"""End to end on tiny data: the run folder, bit-exact resume, refusing to overwrite, dry-run."""

import json

import h5py
import numpy as np
import pytest
import torch

from conftest import assert_resume_is_bit_exact
from nenya.train import main as train_main

RUN_FILES = ["opts.json", "last.pth", "best.pth", "ckpt_epoch_2.pth", "losses_train.h5", "losses_valid.h5",
             "figures/augmentations.png", "figures/embedding_epoch3.png",
             "tb", "training.log", "training_plots.png", "metrics.json"]


def test_run_folder_holds_every_file(tiny_run):
    opts, folder = tiny_run
    metrics = train_main(opts, verbose=False)
    for name in RUN_FILES:
        assert (folder / name).exists(), name
    assert any((folder / "tb").iterdir())
    with h5py.File(folder / "losses_train.h5") as handle:
        assert handle["loss_train"].shape == (3,)
        assert handle["loss_step_train"].shape == (9,)  # 48 images, batch 16, 3 epochs
        np.testing.assert_allclose(handle["loss_avg_train"][:3], np.cumsum(handle["loss_step_train"][:3]) / [1, 2, 3])
    with h5py.File(folder / "losses_valid.h5") as handle:
        assert list(handle["epoch"][:]) == [0, 1, 2, 3]  # epoch 0: at initialisation
        assert "knn_acc_valid" in handle
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert 0.0 <= saved["init"]["knn_acc"] <= 1.0 and saved["best"]["metric"] == "knn_acc"
    state = torch.load(folder / "last.pth", weights_only=True)
    assert state["epoch"] == 3 and state["step"] == 9 and state["opts"]["model_name"] == "tiny"
    resolved = json.loads((folder / "opts.json").read_text())
    assert resolved["_versions"]["torch"] == torch.__version__
    assert "epoch 3/3" in (folder / "training.log").read_text()


@pytest.mark.parametrize("extra", [{}, {"warm": True, "warm_epochs": 2, "optimizer": "lars", "cosine": False,
                                        "lr_decay_epochs": [2]}])
def test_resume_is_bit_exact(tiny_run, monkeypatch, extra):
    opts, folder = tiny_run
    assert_resume_is_bit_exact(opts, folder.parent, monkeypatch, 3, **extra)


def test_refuses_to_start_over_an_existing_run(tiny_run):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(Exception, match="already holds a different run.*--resume"):
        train_main(opts, overrides={"epochs": 1, "learning_rate": 0.2}, verbose=False)
    with pytest.raises(Exception, match="already holds this run"):
        train_main(opts, overrides={"epochs": 1}, verbose=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_dry_run_prints_options_model_and_batch_and_writes_nothing(tiny_run, capsys):
    from nenya.models import build_model
    opts, folder = tiny_run
    result = train_main(opts, dry=True)
    captured = capsys.readouterr()
    printed = captured.err + captured.out
    parameters = sum(p.numel() for p in build_model("resnet18", nchannels=1, feat_dim=16).parameters())
    parameters += 512 * 3 + 3  # the online linear probe: 3 label values in the tiny data
    assert result["parameters"] == parameters
    start = printed.index("{")
    resolved = json.loads(printed[start:printed.index("\n}", start) + 2])
    assert resolved["model_name"] == "tiny" and resolved["method"] == "simclr" and resolved["feat_dim"] == 16
    assert resolved["lr_min"] == pytest.approx(0.05 * 0.1 ** 3)  # derived by option_preprocess
    assert f"model resnet18: {parameters:,} parameters" in printed
    assert "one training batch: [16, 2, 1, 8, 8] float32, [16] int64" in printed
    assert f"run folder would be {folder}" in printed
    assert not folder.exists()


@pytest.mark.parametrize("order", [["--dry-run", "epochs=5", "batch_size_train=8"],
                                   ["epochs=5", "--dry-run", "batch_size_train=8"],
                                   ["epochs=5", "batch_size_train=8", "--dry-run"]])
def test_flags_and_overrides_in_any_order(tiny_run, capsys, order):
    from nenya.train import cli
    opts, folder = tiny_run
    assert cli([opts, *order]) == 0
    captured = capsys.readouterr()
    printed = captured.err + captured.out
    assert '"epochs": 5' in printed and '"batch_size_train": 8' in printed
    assert not folder.exists()


def test_a_monitor_direction_is_the_one_its_method_declares(tiny_run, capsys):
    from nenya.methods.base import Method
    from nenya.methods.mae import MAE
    from nenya.params import Params
    from nenya.train import cli
    from nenya.train_util import monitor_of

    class Dice(Method):
        name = "dice"
        metrics = {"loss": "min", "loss_dice": "max", "dice": "max"}
        monitor = "dice"

        def build_criterion(self):
            return torch.nn.Identity()

    assert monitor_of(Params({"monitor": "loss_dice"}), Dice(Params({}))) == ("loss_dice", "max")
    assert monitor_of(Params({}), Dice(Params({}))) == ("dice", "max")
    assert MAE.direction("psnr_masked") == "max" and MAE.direction("loss_mse") == "min"
    opts, folder = tiny_run
    assert cli([opts, "monitor=loss_dice"]) == 2
    err = capsys.readouterr().err
    assert "'monitor' is 'loss_dice', which method 'simclr' does not report" in err and "knn_acc" in err
    assert "Traceback" not in err


def test_every_reported_metric_has_a_declared_direction(tiny_run):
    from nenya.methods.contrastive import SimCLR
    opts, folder = tiny_run
    metrics = train_main(opts, overrides={"epochs": 1, "monitor": "loss"}, verbose=False)
    assert set(metrics["final"]) <= set(SimCLR.metrics) and metrics["mode"] == "min"
