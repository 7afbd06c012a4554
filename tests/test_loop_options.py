"""Loop options across methods: overfit_batches, mixed precision on CUDA, and an original Nenya opts file."""

import json

import h5py
import numpy as np
import pytest
import torch

from conftest import NENYA_OPTS, write_images_h5
from nenya.train import main as train_main
from test_methods_mae import mae_opts



@pytest.mark.slow
def test_original_nenya_opts_file_runs_unchanged(tmp_path, monkeypatch):
    """The issue's Nenya opts file, as written, on a real file of 48 x 48 cutouts (4 DataLoader workers)."""
    monkeypatch.chdir(tmp_path)
    write_images_h5(tmp_path / "cutouts.h5", n_train=20, n_valid=8, size=48)
    (tmp_path / "nenya.json").write_text(json.dumps(NENYA_OPTS))
    with pytest.warns(UserWarning, match="'sensor' is not used"):
        metrics = train_main("nenya.json", overrides={"epochs": 1}, verbose=False)
    folder = tmp_path / "models" / "v5" / "simclr_resnet18_lr_0.05_decay_0.0001_bsz_64_temp_0.07_trial_0_cosine"
    assert (folder / "last.pth").exists() and metrics["epochs_completed"] == 1
    assert 0.0 <= metrics["final"]["knn_acc"] <= 1.0


def test_overfit_batches_trains_and_validates_on_the_first_batches(tmp_path):
    opts = mae_opts(tmp_path, overfit_batches=1, epochs=3, flip=False, cube_rot90=False, mask_ratio=0.5)
    train_main(opts, verbose=False)
    with h5py.File(tmp_path / "models" / "mae" / "losses_train.h5") as handle:
        assert handle["loss_step_train"].shape == (3,)  # one batch of 4 per epoch
        losses = handle["loss_train"][:]
    assert losses[-1] < losses[0]


def test_amp_is_ignored_on_the_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    opts = mae_opts(tmp_path, amp="fp16", epochs=1)
    train_main(opts, verbose=False)
    state = torch.load(tmp_path / "models" / "mae" / "last.pth", weights_only=True)
    assert state["scaler"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(tmp_path, amp):
    opts = mae_opts(tmp_path, amp=amp, epochs=2, model_name=f"mae_{amp}")
    metrics = train_main(opts, verbose=False)
    assert np.isfinite(metrics["train_loss_final"])
    state = torch.load(tmp_path / "models" / f"mae_{amp}" / "last.pth", weights_only=True)
    assert (state["scaler"] is not None) == (amp == "fp16")
    resumed = train_main(opts, overrides={"epochs": 3}, resume=True, verbose=False)
    assert resumed["epochs_completed"] == 3
