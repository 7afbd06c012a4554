"""Runs that survive numerics (amp auto, fp16 skipped steps) and MLflow tracking with a local store."""

import json
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import fails_with
from nenya.errors import NenyaError
from nenya.params import Params, option_preprocess
from nenya.train import main as train_main
from nenya.train_util import resolve_amp, train_model


@pytest.mark.parametrize("amp, device, bf16, expected", [
    ("auto", "cuda", True, "bf16"), ("auto", "cuda", False, "none"), ("auto", "cpu", True, "none"),
    ("fp16", "cuda", True, "fp16"), ("bf16", "cpu", True, "none"), ("none", "cuda", True, "none")])
def test_amp_auto_is_bf16_on_gpus_that_support_it(amp, device, bf16, expected):
    assert resolve_amp(amp, device, bf16) == expected
    assert Params({}).amp == "auto"


class _Overflowing:
    """A 'method' whose first ``overflowing`` batches have a finite loss but gradients that overflow when scaled."""

    def __init__(self, overflowing):
        self.overflowing = overflowing

    def loss(self, model, batch):
        inputs, flags = batch
        factor = torch.where(flags > 0, torch.tensor(1e35), torch.tensor(1.0))
        return (model(inputs).squeeze(1) * factor).mean(), {}


def test_fp16_skipped_steps_are_counted_and_are_no_non_finite_loss():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = option_preprocess(Params({"epochs": 1, "print_freq": 100}))
    flags = torch.tensor([1, 1, 1, 0, 0, 0])
    loader = DataLoader(TensorDataset(torch.randn(6, 3), flags), batch_size=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_model(loader, model, _Overflowing(3), optimizer, 1, opt, device=torch.device("cpu"), scaler=scaler)
    assert result.extras["skipped_steps"] == 3  # the three overflowing steps, and only them
    assert scaler.get_scale() == 2.0 ** 13  # halved at each skipped step, as GradScaler documents
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the other steps were taken


def test_the_scaler_state_is_in_the_checkpoint():
    from nenya.io.checkpoints import checkpoint_state
    model = nn.Linear(2, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    state = checkpoint_state(model, torch.optim.SGD(model.parameters(), lr=0.1), scaler, 1, 1,
                             option_preprocess(Params({})), {}, {})
    assert state["scaler"]["scale"] == 128.0


def test_mlflow_gets_options_metrics_and_figures_and_a_resumed_run_continues_it(tiny_run):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 2, "tracking": ["tensorboard", "mlflow"]}, verbose=False)
    record = json.loads((folder / "mlflow_run.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{folder.parent / 'mlflow.db'}"
    train_main(opts, overrides={"epochs": 3, "tracking": ["tensorboard", "mlflow"]}, resume=True, verbose=False)
    assert json.loads((folder / "mlflow_run.json").read_text())["run_id"] == record["run_id"]
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and json.loads(run.data.params["feat_dim"]) == 16
    assert [m.step for m in client.get_metric_history(record["run_id"], "loss/train")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(record["run_id"], "knn_acc/valid")] == [1, 2, 3]
    assert {a.path for a in client.list_artifacts(record["run_id"])} >= {"training_plots.png", "figures"}
    assert any((folder / "tb").iterdir())


def test_asking_for_mlflow_without_it_is_one_clear_line(tiny_run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    opts, folder = tiny_run
    fails_with(capsys, [opts, "tracking=[\"mlflow\"]"], "MLflow is not installed", "pip install -e .[mlflow]")
    fails_with(capsys, [opts, "tracking=[\"wandb\"]"], "'tracking'", "allowed: tensorboard, mlflow")


def test_tracking_tensorboard_only_writes_no_mlflow_files(tiny_run):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    assert any((folder / "tb").iterdir()) and not (folder / "mlflow_run.json").exists()
    with pytest.raises(NenyaError):
        Params({"tracking": "tensorboard,comet"})
