"""Resume interrupted anywhere (mid-epoch, mid-validation, with workers), what a checkpoint restores, atomic writes."""

import random

import h5py
import numpy as np
import pytest
import torch

from conftest import assert_resume_is_bit_exact
from nenya.errors import WriteFailed
from nenya.io import checkpoints
from nenya.io.checkpoints import checkpoint_state, load_checkpoint, restore_training_state, save_checkpoint
from nenya.params import Params
from nenya.train import main as train_main
from test_methods_mae import mae_opts


def test_resume_from_the_middle_of_an_epoch_is_bit_exact(tiny_run, monkeypatch):
    opts, folder = tiny_run
    # epoch 2 stops before its second batch: one optimizer step of it is lost and must be redone identically
    assert_resume_is_bit_exact(opts, folder.parent, monkeypatch, 2, batch=1, epochs=2)


def test_resume_from_the_middle_of_validation_drops_the_rows_after_the_checkpoint(tiny_run, monkeypatch):
    opts, folder = tiny_run

    def rows_past_the_checkpoint(split):
        with h5py.File(split / "losses_train.h5") as handle:  # epoch 2 trained, its validation interrupted
            assert list(handle["epoch"][:]) == [1, 2] and handle["loss_step_train"].shape == (6,)
        with h5py.File(split / "losses_valid.h5") as handle:
            assert list(handle["epoch"][:]) == [0, 1]

    # the third pass of epoch 2's validation (the kNN bank: 48 training images, batch 24) stops in its second batch
    assert_resume_is_bit_exact(opts, folder.parent, monkeypatch, 2, batch=1, during="valid", eval_pass=2,
                               before_resume=rows_past_the_checkpoint, epochs=2)


def test_resume_with_dataloader_workers_is_bit_exact(tiny_run, monkeypatch):
    opts, folder = tiny_run
    assert_resume_is_bit_exact(opts, folder.parent, monkeypatch, 2, batch=1, num_workers=2, epochs=2)


@pytest.mark.parametrize("during, batch", [("train", 2), ("valid", 1)])
def test_mae_resume_from_the_middle_of_an_epoch_or_of_validation_is_bit_exact(tmp_path, monkeypatch, during, batch):
    """MAE draws its training masks from the torch generator; validation masks come from (seed, cube index)."""
    opts = mae_opts(tmp_path, epochs=2, batch_size_train=2, batch_size_valid=2, schedule="iter_cosine",
                    warm_epochs=1)
    assert_resume_is_bit_exact(opts, tmp_path / "models", monkeypatch, 2, batch=batch, during=during)


def test_resume_keeps_best_and_init_metrics_from_the_checkpoint(tiny_run):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 2, "monitor": "loss"}, verbose=False)
    state = torch.load(folder / "last.pth", weights_only=True)
    # values no training could produce: a resumed run must carry them on, not re-derive them
    unbeatable = {"metric": "loss", "value": -1.0, "epoch": 1}
    state["best"], state["init_metrics"] = unbeatable, {"loss": 123.0, "knn_acc": 0.25}
    torch.save(state, folder / "last.pth")
    best_before = (folder / "best.pth").read_bytes()
    metrics = train_main(opts, overrides={"epochs": 3, "monitor": "loss"}, resume=True, verbose=False)
    assert metrics["best"] == unbeatable and metrics["init"] == {"loss": 123.0, "knn_acc": 0.25}
    assert metrics["epochs_completed"] == 3
    assert (folder / "best.pth").read_bytes() == best_before  # epoch 3 did not beat -1
    last = torch.load(folder / "last.pth", weights_only=True)
    assert last["best"] == unbeatable and last["init_metrics"] == {"loss": 123.0, "knn_acc": 0.25}
    with h5py.File(folder / "losses_valid.h5") as handle:  # no second validation at initialisation
        assert list(handle["epoch"][:]) == [0, 1, 2, 3]


def _draws():
    return torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)]


def test_restoring_a_checkpoint_restores_every_random_generator(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    _draws()
    state = checkpoint_state(model, optimizer, None, 1, 5, Params({}), {}, {})
    expected = _draws()
    save_checkpoint(str(tmp_path / "last.pth"), state)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    restore_training_state(str(tmp_path / "last.pth"), model, optimizer, None, "sgd", steps_per_epoch=5)
    got = _draws()
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fp16 gradient scaler needs a CUDA GPU")
def test_resume_restores_the_gradient_scaler_on_cuda(tiny_run):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1, "amp": "fp16"}, verbose=False)
    state = torch.load(folder / "last.pth", weights_only=True)
    assert state["scaler"] is not None and state["scaler"]["scale"] == 65536.0
    state["scaler"]["scale"] = 1024.0  # a scale the run itself would not reach in three steps
    torch.save(state, folder / "last.pth")
    resumed = train_main(opts, overrides={"epochs": 2, "amp": "fp16"}, resume=True, verbose=False)
    assert resumed["epochs_completed"] == 2
    after = torch.load(folder / "last.pth", weights_only=True)["scaler"]["scale"]
    assert after <= 1024.0  # continued from the restored scale (halved on overflow), not from 65536


def test_a_checkpoint_write_that_fails_half_way_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint(str(path), {"model": {"w": torch.ones(3)}, "epoch": 1})

    def fails_half_way(state, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 the first bytes of a zip archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", fails_half_way)
    with pytest.raises(WriteFailed, match="No space left"):  # the one-line error of a full disk
        save_checkpoint(str(path), {"model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.undo()
    state = load_checkpoint(str(path))
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_a_run_whose_checkpoint_write_fails_resumes_from_the_previous_one(tiny_run, monkeypatch):
    opts, folder = tiny_run
    real_save = torch.save

    def full_disk_at_epoch_2(state, handle, *args, **kwargs):
        if isinstance(state, dict) and state.get("epoch") == 2 and str(handle.name).endswith("last.pth.tmp"):
            handle.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(state, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", full_disk_at_epoch_2)
    with pytest.raises(WriteFailed):
        train_main(opts, overrides={"epochs": 2}, verbose=False)
    monkeypatch.undo()
    assert load_checkpoint(str(folder / "last.pth"))["epoch"] == 1
    assert not (folder / "last.pth.tmp").exists()
    assert train_main(opts, overrides={"epochs": 2}, resume=True, verbose=False)["epochs_completed"] == 2


def test_every_epoch_draws_from_its_own_seed_so_a_checkpoint_without_rng_states_resumes_exactly(tiny_run,
                                                                                                monkeypatch):
    """Epoch e's shuffle and augmentations come from (seed, e) alone, not from what earlier epochs drew."""
    opts, folder = tiny_run

    def forget_the_rng_states(split):
        state = torch.load(split / "last.pth", weights_only=True)
        del state["rng"]
        torch.save(state, split / "last.pth")

    assert_resume_is_bit_exact(opts, folder.parent, monkeypatch, 2, epochs=2, before_resume=forget_the_rng_states)
