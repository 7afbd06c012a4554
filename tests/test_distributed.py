"""torch.distributed on the CPU: 2 processes with gloo against 1 process with the doubled batch."""

import json
import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from conftest import write_images_h5, write_opts
from nenya.losses import SupConLoss
from nenya.registry import MODELS, register_model
from nenya.train import main as train_main

pytestmark = pytest.mark.slow  # each test starts processes (a few seconds each)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PlainEncoder(nn.Module):
    """A small encoder without BatchNorm (torch's SyncBatchNorm needs GPUs), with SupConResNet's interface."""

    def __init__(self, nchannels=1, head="mlp", feat_dim=16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(nchannels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dim_in = 16
        self.head = nn.Linear(16, feat_dim)

    def forward(self, x, return_features=False):
        features = self.encoder(x)
        projections = F.normalize(self.head(features), dim=1)
        return (projections, features) if return_features else projections

    def encode(self, x):
        return self.encoder(x)


if "test_plain_cnn" not in MODELS:
    register_model("test_plain_cnn")(PlainEncoder)


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _train(rank, world, port, opts, overrides, resume, results):
    _join(rank, world, port)
    try:
        results[rank] = train_main(opts, overrides=overrides, resume=resume, verbose=False)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def train_in_processes(opts, overrides, world=2, resume=False) -> list:
    """Train with ``world`` processes (gloo); return each process's metrics."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_train, args=(world, free_port(), opts, overrides, resume, results), nprocs=world)
        return [results[rank] for rank in range(world)]


@pytest.fixture
def ssl_opts(tmp_path):
    """A SimCLR opts file: 48 + 24 labelled 8x8 images, a BatchNorm-free encoder, no random augmentation."""
    write_images_h5(tmp_path / "images.h5")
    return write_opts(tmp_path / "opts.json", method="simclr", model="test_plain_cnn", nchannels=1, feat_dim=16,
                      images_file="images.h5", data_folder=str(tmp_path), model_root=str(tmp_path / "models"),
                      batch_size_valid=24, epochs=1, learning_rate=0.1, optimizer="sgd", knn_k=3, save_freq=1,
                      random_cropjitter=None, flip=False, gauss_noise=0.0, print_freq=1, seed=3)


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_two_processes_of_batch_b_end_like_one_process_of_batch_2b(ssl_opts, tmp_path):
    single = train_main(ssl_opts, overrides={"batch_size_train": 16, "model_name": "one"}, verbose=False)
    both = train_in_processes(ssl_opts, {"batch_size_train": 8, "model_name": "two"})
    one, two = weights(tmp_path / "models/one/last.pth"), weights(tmp_path / "models/two/last.pth")
    assert set(one) == set(two)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=key)
    for name, value in single["final"].items():  # every validation metric over both processes' items
        assert both[0]["final"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert both[0]["final"] == both[1]["final"]
    saved = json.loads((tmp_path / "models/two/opts.json").read_text())
    assert saved["world_size"] == 2 and saved["global_batch_size"] == 16


def test_mae_two_processes_of_batch_b_end_like_one_process_of_batch_2b(tmp_path):
    """MAE's training masks come from (seed, epoch, item index), so they do not depend on the process."""
    from test_methods_mae import mae_opts
    opts = mae_opts(tmp_path, epochs=1, flip=False, cube_rot90=False, optimizer="sgd", learning_rate=0.05)
    single = train_main(opts, overrides={"batch_size_train": 4, "model_name": "one"}, verbose=False)
    both = train_in_processes(opts, {"batch_size_train": 2, "model_name": "two"})
    one, two = weights(tmp_path / "models/one/last.pth"), weights(tmp_path / "models/two/last.pth")
    for key in one:  # float sums in another order: about 1e-6 apart (other masks: 1e-3 and more)
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=2e-5, msg=key)
    for name, value in single["final"].items():
        assert both[0]["final"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_ema_and_clipping_under_two_processes_end_like_one_process(ssl_opts, tmp_path):
    """The EMA is of the unwrapped model (no DDP 'module.' in its names) and clips the all-reduced gradient."""
    extra = {"ema_decay": 0.8, "clip_grad_norm": 0.05}
    train_main(ssl_opts, overrides={"batch_size_train": 16, "model_name": "one", **extra}, verbose=False)
    train_in_processes(ssl_opts, {"batch_size_train": 8, "model_name": "two", **extra})
    one = torch.load(tmp_path / "models/one/last.pth", weights_only=True)
    two = torch.load(tmp_path / "models/two/last.pth", weights_only=True)
    assert set(one["ema"]) == set(two["ema"]) and not any(k.startswith("module.module.") for k in two["ema"])
    for key in one["ema"]:
        torch.testing.assert_close(two["ema"][key], one["ema"][key], rtol=1e-4, atol=1e-6, msg=key)
    with h5py.File(tmp_path / "models/one/losses_train.h5") as x, h5py.File(tmp_path / "models/two/losses_train.h5") as y:
        assert (x["grad_norm_train"][:] > 0.05).all()  # the clip acted at every step
        np.testing.assert_allclose(y["grad_norm_train"][:], x["grad_norm_train"][:], rtol=1e-4)


def test_only_the_first_process_writes(ssl_opts, tmp_path):
    train_in_processes(ssl_opts, {"batch_size_train": 8, "model_name": "two"})
    folders = [p for p in (tmp_path / "models").iterdir() if p.is_dir()]
    assert [p.name for p in folders] == ["two"]
    log = (tmp_path / "models/two/training.log").read_text().splitlines()
    assert sum("epoch 1/1: train loss" in line for line in log) == 1  # one process logged
    assert sum("2 processes, global batch 16" in line for line in log) == 1


def test_a_resumed_two_process_run_ends_like_an_uninterrupted_one(ssl_opts, tmp_path):
    train_in_processes(ssl_opts, {"batch_size_train": 8, "epochs": 2, "model_name": "whole"})
    train_in_processes(ssl_opts, {"batch_size_train": 8, "epochs": 1, "model_name": "split"})
    train_in_processes(ssl_opts, {"batch_size_train": 8, "epochs": 2, "model_name": "split"}, resume=True)
    whole, split = weights(tmp_path / "models/whole/last.pth"), weights(tmp_path / "models/split/last.pth")
    for key in whole:
        assert torch.equal(whole[key], split[key]), key


def _gathered_loss(rank, world, port, features, results):
    _join(rank, world, port)
    from nenya import distributed
    distributed.init(use_cuda=False)
    local = features[rank * 4:(rank + 1) * 4].clone().requires_grad_()
    loss = SupConLoss(temperature=0.5)(distributed.gather_with_gradient(local))
    loss.backward()
    results[rank] = (loss.item(), local.grad.clone())
    torch.distributed.destroy_process_group()


def test_the_gathered_contrastive_loss_is_the_loss_of_the_concatenated_batch():
    features = F.normalize(torch.randn(8, 2, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    whole = features.clone().requires_grad_()
    expected = SupConLoss(temperature=0.5)(whole)
    expected.backward()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gathered_loss, args=(2, free_port(), features, results), nprocs=2)
        for rank in range(2):
            loss, grad = results[rank]
            assert loss == pytest.approx(expected.item(), rel=1e-6)
            # every process's loss is the global one, so each piece gets the sum over processes: 2 x the gradient
            # of one loss (DistributedDataParallel then averages the parameters' gradients over the processes)
            torch.testing.assert_close(grad, 2 * whole.grad[rank * 4:(rank + 1) * 4])


def test_syncbn_converts_every_batchnorm_and_is_refused_on_cpus(ssl_opts, tmp_path, capsys):
    from nenya.models import build_model
    from nenya.train_util import synchronised_batchnorm
    model = synchronised_batchnorm(build_model("resnet18", nchannels=1, feat_dim=16))
    kinds = [type(module) for module in model.modules()]
    assert nn.BatchNorm2d not in kinds and kinds.count(nn.SyncBatchNorm) == 20
    with pytest.raises(Exception):  # the NenyaError reaches the spawning process as a failure
        train_in_processes(ssl_opts, {"batch_size_train": 8, "model_name": "sync", "model": "resnet18",
                                      "syncBN": True})


def test_launch_runs_two_processes_on_the_cpu_and_writes_one_run_folder(ssl_opts, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    done = subprocess.run([sys.executable, "-m", "nenya.launch", "--nproc_per_node", "2", ssl_opts,
                           "model=resnet18", "model_name=launched", "batch_size_train=8"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "models" / "launched"
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()] == ["launched"]
    assert (folder / "last.pth").exists() and json.loads((folder / "opts.json").read_text())["world_size"] == 2
    bad = subprocess.run([sys.executable, "-m", "nenya.launch", "--nproc_per_node", "2", ssl_opts, "epochs=0"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("nenya: error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "'epochs'" in errors[0] and "Traceback" not in bad.stderr
