"""Loop features every method gets: plateau schedule, early stopping, the rate per step, gradient clipping, EMA.

Each is checked against a direct computation (the documented rule written out here, or autograd on a
copy of the model), and resumed runs against uninterrupted ones bit for bit.
"""

import copy
import h5py
import numpy as np
import pytest
import torch
from torch import nn

import nenya.train_util as train_module
from conftest import assert_resume_is_bit_exact, fails_with, write_opts
from nenya.models.ema import ModelEMA
from nenya.params import Params, option_preprocess
from nenya.stopping import EarlyStopping
from nenya.train import main as train_main
from test_models_ema import direct_ema

# every loop feature at once: plateau (reduces after epoch 2 of this tiny run), EMA, clipping after accumulation
ALL_ON = dict(schedule="plateau", cosine=False, plateau_patience=0, plateau_factor=0.5, monitor="knn_acc", ema_decay=0.9,
              clip_grad_norm=2.0, early_stopping_patience=2, accumulate_grad_batches=2)


def plateau_rates(values, lr, factor, patience, mode, threshold=1e-4):
    """ReduceLROnPlateau's documented rule written out: the rate after each value (relative threshold)."""
    best, bad, rates = None, 0, []
    for value in values:
        better = best is None or (value > best * (1 + threshold) if mode == "max" else value < best * (1 - threshold))
        best, bad = (value, 0) if better else (best, bad + 1)
        if bad > patience:
            lr, bad = lr * factor, 0
        rates.append(lr)
    return rates


def test_plateau_after_warm_up_and_the_rate_of_every_step(tiny_run):
    opts, folder = tiny_run
    metrics = train_main(opts, overrides={**ALL_ON, "early_stopping_patience": None, "epochs": 4, "warm": True,
                                          "warm_epochs": 1, "warmup_from": 0.01}, verbose=False)
    with h5py.File(folder / "losses_train.h5") as train, h5py.File(folder / "losses_valid.h5") as valid:
        rates, step_epoch = train["lr_step_train"][:], train["step_epoch"][:]
        knn = dict(zip(valid["epoch"][:], valid["knn_acc_valid"][:]))
        norms, update_epoch = train["grad_norm_train"][:], train["update_epoch"][:]
    per_epoch = [rates[step_epoch == e] for e in range(1, 5)]
    assert all(len(r) == 3 for r in per_epoch)  # 48 images, batch 16: three batches, a rate for each
    # epoch 1: Nenya's linear warm-up from 0.01 to 0.05, batch by batch; no plateau step during the warm-up
    np.testing.assert_allclose(per_epoch[0], [0.01 + b / 3 * 0.04 for b in range(3)], rtol=1e-12)
    expected = [0.05] + plateau_rates([knn[2], knn[3]], 0.05, 0.5, 0, "max")  # epochs 2, 3, 4
    for epoch, rate in zip((2, 3, 4), expected):
        np.testing.assert_allclose(per_epoch[epoch - 1], rate, rtol=1e-12, err_msg=f"epoch {epoch}")
    assert expected[-1] < 0.05  # the rule did reduce the rate in this run, so the check above means something
    # three batches, accumulate 2: optimizer steps after batches 2 and 3, one gradient norm each
    assert list(update_epoch) == [1, 1, 2, 2, 3, 3, 4, 4] and np.isfinite(norms).all() and (norms > 0).all()
    assert metrics["epochs_completed"] == 4 and "stopped_early" not in metrics


@pytest.mark.slow
def test_resume_with_plateau_early_stopping_ema_and_clipping_is_bit_exact(tiny_run, monkeypatch):
    opts, folder = tiny_run
    # the scheduler reduces after epoch 2 and early stopping stops after epoch 3: both need their restored state
    assert_resume_is_bit_exact(opts, folder.parent, monkeypatch, 3, batch=1, **ALL_ON)
    state = torch.load(folder.parent / "whole" / "last.pth", weights_only=True)
    assert state["scheduler"]["_last_lr"] == [0.0125] and state["early_stopping"]["stopped_epoch"] == 3
    assert int(state["ema"]["n_averaged"]) == 6  # two optimizer steps per epoch


def test_early_stopping_ends_the_run_says_why_and_a_resume_trains_no_more(tiny_run):
    opts, folder = tiny_run
    # the validation loss never falls by 10: the run stops one epoch after the first validation
    metrics = train_main(opts, overrides={"epochs": 5, "early_stopping_patience": 1, "min_delta": 10.0,
                                          "monitor": "loss"}, verbose=False)
    assert metrics["epochs_completed"] == 2
    assert metrics["stopped_early"].startswith("early stopping after epoch 2: loss has not improved by more than "
                                               "min_delta=10 for 1 epochs")
    with h5py.File(folder / "losses_train.h5") as handle:
        assert list(handle["epoch"][:]) == [1, 2]
    assert "early stopping after epoch 2" in (folder / "training.log").read_text()
    again = train_main(opts, overrides={"epochs": 5, "early_stopping_patience": 1, "min_delta": 10.0,
                                        "monitor": "loss"}, resume=True, verbose=False)
    assert again["epochs_completed"] == 2 and again["stopped_early"] == metrics["stopped_early"]
    with h5py.File(folder / "losses_train.h5") as handle:
        assert list(handle["epoch"][:]) == [1, 2]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_early_stopping_counts_epochs_since_the_last_improvement_by_more_than_min_delta(mode):
    sign = 1 if mode == "min" else -1
    values = [sign * v for v in (5.0, 4.95, 4.5, 4.45, 4.42, 4.0, 4.0, 3.99)]  # one value per epoch
    stopping = EarlyStopping(patience=2, min_delta=0.1, mode=mode)
    stops = []
    for epoch, value in enumerate(values, start=1):  # the loop stops at the first True
        stops.append(stopping.update(value, epoch))
        if stops[-1]:
            break
    # improvements by more than 0.1: epochs 1 (first) and 3 (4.5); 4 and 5 are within 0.1 of 4.5, so epoch 5
    # is the second epoch without one (epoch 6's 4.0 would have been one)
    assert stops == [False, False, False, False, True] and stopping.stopped_epoch == 5
    assert stopping.best == sign * 4.5 and stopping.best_epoch == 3
    never = EarlyStopping(patience=None, min_delta=0.0, mode=mode)
    assert not any(never.update(value, epoch) for epoch, value in enumerate(values, start=1))


def _one_step_setup(accumulate=2, clip=0.5):
    """A linear model, two batches, plain SGD with rate 1, and the options of an accumulated clipped step."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    batches = [(torch.randn(5, 4), torch.randn(5, 3) * 4) for _ in range(2)]
    opt = option_preprocess(Params({"accumulate_grad_batches": accumulate, "clip_grad_norm": clip, "epochs": 1,
                                    "print_freq": 100}))
    return model, batches, opt


class Squares:
    """A Method as train_model uses it: the mean squared error of a batch."""

    def loss(self, model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean(), {}


def _direct_clipped_step(model, batches, clip):
    """Weights after one SGD step (rate 1) on the mean gradient of the batches clipped to ``clip``; its norm."""
    copy_ = copy.deepcopy(model)
    loss = sum(((copy_(x) - y) ** 2).mean() for x, y in batches) / len(batches)
    grads = torch.autograd.grad(loss, list(copy_.parameters()))
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    factor = min(1.0, clip / (float(norm) + 1e-6))
    return [p.detach() - factor * g for p, g in zip(copy_.parameters(), grads)], float(norm)


@pytest.mark.parametrize("scaled", [False, True])
def test_clipping_is_once_per_optimizer_step_on_the_accumulated_unscaled_gradient(scaled):
    model, batches, opt = _one_step_setup()
    expected, norm = _direct_clipped_step(model, batches, 0.5)
    assert norm > 0.5  # the clip acts
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    # a gradient scaler on the CPU scales the loss by 2**12 as fp16 training on a GPU does
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, enabled=scaled)
    result = train_module.train_model(batches, model, Squares(), optimizer, 1, opt, device=torch.device("cpu"),
                                      scaler=scaler)
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.per_update["grad_norm"], [norm], rtol=1e-5)  # the norm before clipping


def test_a_step_the_scaler_skips_stays_skipped_with_clipping_and_ema():
    model, batches, opt = _one_step_setup()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ema = ModelEMA(model, decay=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)  # the scaled gradients overflow to inf
    result = train_module.train_model(batches, model, Squares(), optimizer, 1, opt, device=torch.device("cpu"),
                                      scaler=scaler, ema=ema)
    for got, want in zip(model.parameters(), before):
        assert torch.equal(got.detach(), want)
    assert result.extras["skipped_steps"] == 1 and scaler.get_scale() < 3e38
    assert not np.isfinite(result.per_update["grad_norm"]).any()
    assert int(ema.n_averaged) == 0  # a skipped step is not averaged in


def test_ema_is_updated_after_every_optimizer_step_used_for_validation_and_saved(tiny_run, monkeypatch):
    opts, folder = tiny_run
    states, validated = [], []
    real_step, real_validate = train_module.optimizer_step, train_module.validate

    def recording_step(optimizer, scaler, clip=None):
        out = real_step(optimizer, scaler, clip)
        states.append({k: v.detach().clone() for k, v in model_of[0].state_dict().items()})
        return out

    model_of = []
    real_train = train_module.train_model

    def train_model(loader, model, *args, **kwargs):
        model_of[:] = [model]
        return real_train(loader, model, *args, **kwargs)

    def validate(loader, model, *args, **kwargs):
        validated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_validate(loader, model, *args, **kwargs)

    monkeypatch.setattr(train_module, "optimizer_step", recording_step)
    monkeypatch.setattr(train_module, "train_model", train_model)
    monkeypatch.setattr(train_module, "validate", validate)
    train_main(opts, overrides={"epochs": 1, "ema_decay": 0.6}, verbose=False)
    monkeypatch.undo()
    assert len(states) == 3  # three batches, three optimizer steps
    expected = direct_ema(states, 0.6)  # parameters and BatchNorm buffers, decay warmed up
    state = torch.load(folder / "last.pth", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert set(ema) == set(expected) and any("running_mean" in k for k in ema)
    for key in expected:
        torch.testing.assert_close(ema[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(ema["encoder.stem.0.weight"], state["model"]["encoder.stem.0.weight"])
    for key in expected:  # validation after epoch 1 ran on the EMA weights, not on the raw ones
        assert torch.equal(validated[-1][key], ema[key]), key
    best = torch.load(folder / "best.pth", weights_only=True)
    assert best["ema"] is not None and best["model"] is not None  # both weights kept
    from nenya.evaluate import load_run
    _, _, model = load_run(str(folder), "last")
    for key, value in model.state_dict().items():  # nenya.evaluate uses the EMA weights
        assert torch.equal(value, ema[key]), key


def test_checkpoint_entries_load_weights_only_and_without_ema_resume_is_refused(tiny_run, capsys):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1}, verbose=False)
    state = torch.load(folder / "last.pth", weights_only=True)
    assert state["ema"] is None and state["scheduler"] == {} and state["early_stopping"]["stopped_epoch"] is None
    fails_with(capsys, [opts, "--resume", "epochs=2", "ema_decay=0.9"], "ema_decay")


def test_cosine_and_plateau_exclude_each_other_and_ranges_are_checked(tmp_path, capsys):
    opts = write_opts(tmp_path / "o.json", schedule="plateau", cosine=True)
    fails_with(capsys, [opts, "--dry-run"], "'cosine'", "plateau")
    for key, value, text in (("plateau_factor", 1.0, "in (0, 1)"), ("clip_grad_norm", 0, "greater than 0"),
                             ("ema_decay", 1.0, "in [0, 1)"), ("early_stopping_patience", 0, "at least 1"),
                             ("min_delta", -0.1, "at least 0")):
        fails_with(capsys, [write_opts(tmp_path / f"{key}.json", **{key: value}), "--dry-run"], key, text)


def test_nenya_train_refuses_a_sweep_file_with_a_hint(tmp_path, capsys):
    opts = write_opts(tmp_path / "s.json", experiments=[{"name": "a"}])
    fails_with(capsys, [opts], "'experiments'", "python -m nenya.sweep")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast with its gradient scaler needs a CUDA GPU")
def test_fp16_training_with_clipping_records_the_unscaled_norm_on_cuda(tiny_run):
    opts, folder = tiny_run
    train_main(opts, overrides={"epochs": 1, "amp": "fp16", "clip_grad_norm": 1.0}, verbose=False)
    with h5py.File(folder / "losses_train.h5") as handle:
        norms = handle["grad_norm_train"][:]
    finite = norms[np.isfinite(norms)]
    # a norm of the scaled gradient would be about 65536 times larger (the scaler's first scale)
    assert finite.size and (finite < 1e4).all()
