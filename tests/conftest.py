"""Shared fixtures: small HDF5 files in Nenya's layout and opts files that point to them."""

import json

import h5py
import numpy as np
import pytest
import torch

import nenya.train_util as train_module
from nenya.train import cli as train_cli
from nenya.train import main as train_main

# The opts file of the original Nenya project quoted in the core issue (keys training does not use included).
NENYA_OPTS = {"ssl_method": "SimCLR", "ssl_model": "resnet18", "nchannels": 1, "learning_rate": 0.05,
              "lr_decay_epochs": "700,800,900", "lr_decay_rate": 0.1, "batch_size_train": 64,
              "batch_size_valid": 64, "epochs": 200, "feat_dim": 128, "temp": 0.07, "weight_decay": 1e-4,
              "momentum": 0.9, "cosine": True, "warm": False, "syncBN": False, "trial": 0, "print_freq": 20,
              "num_workers": 4, "random_cropjitter": [40, 5], "rotate": True, "flip": True, "demean": True,
              "gauss_noise": 0.0, "model_root": "models/v5", "data_folder": "./", "images_file": "cutouts.h5",
              "train_key": "train", "valid_key": "valid", "save_freq": 10, "valid_freq": 5,
              "nenya_data": True, "cuda_use": True, "sensor": "MODIS"}


def write_images_h5(path, n_train=48, n_valid=24, channels=1, size=8, labels=True, seed=0):
    """A small random image file with train/valid partitions (and labels)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        for key, count in (("train", n_train), ("valid", n_valid)):
            handle[key] = rng.random((count, channels, size, size), dtype=np.float32)
            if labels:
                handle[f"{key}_labels"] = rng.integers(0, 3, count)
    return path


def knn_by_hand(bank, bank_labels, queries, k, leave_one_out=False):
    """kNN predictions in float64 numpy: the majority label among the k bank rows of highest cosine similarity
    (ties: the tied label with the larger summed similarity); ``leave_one_out`` skips bank row i for query i."""
    bank, queries = np.asarray(bank, np.float64), np.asarray(queries, np.float64)
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    bank_labels = np.asarray(bank_labels)
    predictions = []
    for index, query in enumerate(queries):
        similarity = bank @ query
        candidates = [j for j in range(len(bank)) if not (leave_one_out and j == index)]
        nearest = sorted(candidates, key=lambda j: -similarity[j])[:k]
        votes = {}
        for j in nearest:
            count, total = votes.get(bank_labels[j], (0, 0.0))
            votes[bank_labels[j]] = (count + 1, total + similarity[j])
        predictions.append(max(votes, key=lambda label: votes[label]))
    return np.array(predictions)


def write_opts(path, **values):
    """Write an opts file and return its path."""
    path.write_text(json.dumps(values))
    return str(path)


@pytest.fixture
def tiny_run(tmp_path):
    """(opts path, run folder) of a tiny SimCLR run on random 8x8 images."""
    write_images_h5(tmp_path / "images.h5")
    opts = write_opts(tmp_path / "opts.json", ssl_method="SimCLR", ssl_model="resnet18", nchannels=1,
                      images_file="images.h5", data_folder=str(tmp_path), model_root=str(tmp_path / "models"),
                      model_name="tiny", batch_size_train=16, batch_size_valid=24, epochs=3, feat_dim=16,
                      learning_rate=0.05, cosine=True, random_cropjitter=[6, 1], flip=True, gauss_noise=0.05,
                      save_freq=2, valid_freq=1, print_freq=1, knn_k=3)
    return opts, tmp_path / "models" / "tiny"


def fails_with(capsys, argv, *expected, cli=train_cli):
    """Run a CLI; assert exit 2 and one ``nenya: error:`` line containing every ``expected`` text."""
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("nenya: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    for text in expected:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def interrupt_at(monkeypatch, stop_epoch, batch=None, during="train", eval_pass=0):
    """Make the loop raise KeyboardInterrupt in epoch ``stop_epoch``.

    ``batch`` None: when the epoch starts. ``during="train"``: before training batch ``batch`` of the epoch
    (after ``batch`` optimizer steps of it). ``during="valid"``: in batch ``batch`` of evaluation pass number
    ``eval_pass`` of the epoch's validation (the epoch's training curves are already written then).
    """
    real_train, real_step_lr, real_pass = (train_module.train_model, train_module.step_learning_rate,
                                           train_module.evaluation_pass)
    current = {"epoch": 0, "passes": 0}

    def train_model(loader, model, method, optimizer, epoch, *args, **kwargs):
        current.update(epoch=epoch, passes=0)
        if epoch == stop_epoch and batch is None:
            raise KeyboardInterrupt
        return real_train(loader, model, method, optimizer, epoch, *args, **kwargs)

    def step_learning_rate(opt, epoch, batch_id, total, optimizer):
        if during == "train" and (epoch, batch_id) == (stop_epoch, batch):
            raise KeyboardInterrupt
        return real_step_lr(opt, epoch, batch_id, total, optimizer)

    def evaluation_pass(data, model, step, *args, **kwargs):
        if during == "valid" and current["epoch"] == stop_epoch:
            current["passes"] += 1
            if current["passes"] == eval_pass + 1:
                seen = [0]

                def interrupted_step(model, items, indices):
                    if seen[0] == batch:
                        raise KeyboardInterrupt
                    seen[0] += 1
                    return step(model, items, indices)

                return real_pass(data, model, interrupted_step, *args, **kwargs)
        return real_pass(data, model, step, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_model", train_model)
    monkeypatch.setattr(train_module, "step_learning_rate", step_learning_rate)
    monkeypatch.setattr(train_module, "evaluation_pass", evaluation_pass)


def assert_resume_is_bit_exact(opts, root, monkeypatch, stop_epoch, batch=None, during="train", eval_pass=0,
                               before_resume=None, **overrides):
    """Train whole; train again interrupted (see ``interrupt_at``) and resumed; assert identical results.

    ``before_resume(folder)`` is called on the interrupted run's folder before it is resumed.
    """
    whole = train_main(opts, overrides={"model_name": "whole", **overrides}, verbose=False)
    interrupt_at(monkeypatch, stop_epoch, batch, during, eval_pass)
    with pytest.raises(KeyboardInterrupt):
        train_main(opts, overrides={"model_name": "split", **overrides}, verbose=False)
    monkeypatch.undo()
    state = torch.load(root / "split" / "last.pth", weights_only=True)
    assert state["epoch"] == stop_epoch - 1  # the interrupted epoch left no checkpoint
    if before_resume is not None:
        before_resume(root / "split")
    split = train_main(opts, overrides={"model_name": "split", **overrides}, resume=True, verbose=False)
    a = torch.load(root / "whole" / "last.pth", weights_only=True)
    b = torch.load(root / "split" / "last.pth", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name])
    for key in ("scheduler", "ema", "early_stopping"):  # plateau counters, EMA weights and buffers, early stopping
        tensors_equal(a.get(key), b.get(key), key)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and a["rng"]["python"] == b["rng"]["python"]
    assert torch.equal(a["rng"]["numpy"]["key"], b["rng"]["numpy"]["key"])
    assert (a["step"], a["epoch"], a["best"], a["init_metrics"]) == (b["step"], b["epoch"], b["best"],
                                                                     b["init_metrics"])
    assert whole == split  # metrics.json: init, best, final, last training loss
    if (root / "whole" / "best.pth").exists():
        best_a = torch.load(root / "whole" / "best.pth", weights_only=True)
        best_b = torch.load(root / "split" / "best.pth", weights_only=True)
        assert best_a["epoch"] == best_b["epoch"]
        for key in best_a["model"]:
            assert torch.equal(best_a["model"][key], best_b["model"][key]), key
        tensors_equal(best_a.get("ema"), best_b.get("ema"), "best.pth:ema")
    for name in ("losses_train.h5", "losses_valid.h5"):
        with h5py.File(root / "whole" / name) as x, h5py.File(root / "split" / name) as y:
            assert sorted(x) == sorted(y)
            for key in x:
                np.testing.assert_array_equal(x[key][:], y[key][:], err_msg=key)


def tensors_equal(a, b, where):
    """Nested dicts / lists of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            tensors_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            tensors_equal(x, y, f"{where}[{index}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)


def assert_same_run(whole, other):
    """Two run folders hold the same checkpoints, curves and metrics, and no temporary file."""
    for name in ("last.pth", "best.pth", "ckpt_epoch_2.pth"):
        a = torch.load(whole / name, weights_only=True)
        b = torch.load(other / name, weights_only=True)
        for key in ("model", "optimizer", "epoch", "step", "best", "init_metrics", "final", "train_loss"):
            tensors_equal(a[key], b[key], f"{name}:{key}")
    for name in ("losses_train.h5", "losses_valid.h5"):
        with h5py.File(whole / name) as x, h5py.File(other / name) as y:
            assert sorted(x) == sorted(y), name
            for key in x:
                np.testing.assert_array_equal(x[key][:], y[key][:], err_msg=f"{name}:{key}")
    assert json.loads((whole / "metrics.json").read_text()) == json.loads((other / "metrics.json").read_text())
    figures = [sorted(p.name for p in (folder / "figures").iterdir()) for folder in (whole, other)]
    assert figures[0] == figures[1]
    left = [str(p) for p in other.rglob("*.tmp")]
    assert not left, left
