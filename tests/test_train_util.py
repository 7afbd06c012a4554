"""The shared loop's pieces: schedules checked by hand, optimizers, LARS, AverageMeter, HDF5 curves."""

import numpy as np
import pytest
import torch
from torch import nn

from nenya import curves
from nenya.lars import LARS
from nenya.params import option_preprocess, validate
from nenya.train_util import (AverageMeter, adjust_learning_rate, epoch_learning_rate, set_optimizer,
                              warmup_learning_rate)


def _opt(**values):
    return option_preprocess(validate(values))


def test_cosine_schedule_by_hand():
    opt = _opt(learning_rate=0.1, lr_decay_rate=0.1, cosine=True, epochs=10)
    # eta_min = 0.1 * 0.001 = 1e-4; epoch 5 of 10 is halfway: (0.1 + 1e-4) / 2
    assert epoch_learning_rate(opt, 5) == pytest.approx(0.05005)
    assert epoch_learning_rate(opt, 10) == pytest.approx(1e-4)
    # epoch 1: 1e-4 + (0.1 - 1e-4) * (1 + cos(pi/10)) / 2 = 0.0975553...
    assert epoch_learning_rate(opt, 1) == pytest.approx(0.09755527298894294)


def test_step_schedule_by_hand():
    opt = _opt(learning_rate=0.05, lr_decay_rate=0.1, lr_decay_epochs="3,6", epochs=10)
    rates = [epoch_learning_rate(opt, epoch) for epoch in range(1, 9)]
    assert rates == pytest.approx([0.05, 0.05, 0.05, 0.005, 0.005, 0.005, 0.0005, 0.0005])


def test_warmup_by_hand_then_schedule():
    opt = _opt(learning_rate=0.5, warm=True, warm_epochs=2, warmup_from=0.01)
    assert opt.warmup_to == 0.5
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    # epoch 2, batch 5 of 10: p = (5 + 10) / 20 = 0.75 -> 0.01 + 0.75 * 0.49 = 0.3775
    assert warmup_learning_rate(opt, 2, 5, 10, optimizer) == pytest.approx(0.3775)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.3775)
    assert warmup_learning_rate(opt, 3, 0, 10, optimizer) is None
    assert adjust_learning_rate(opt, optimizer, 3) == 0.5


def test_average_meter_weights_by_count():
    meter = AverageMeter()
    meter.update(1.0, 3)
    meter.update(3.0, 1)
    assert (meter.val, meter.avg, meter.count) == (3.0, 1.5, 4)


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                        ("adamw", torch.optim.AdamW), ("lars", LARS)])
def test_set_optimizer_kinds_and_no_decay_on_biases_and_norms(name, kind):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    optimizer = set_optimizer(_opt(optimizer=name, weight_decay=0.1), model)
    assert isinstance(optimizer, kind)
    if name in ("adamw", "lars"):
        no_decay = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
        assert sum(p.numel() for g in no_decay for p in g["params"]) == 4 + 4 + 4  # bias, bn weight, bn bias


def test_lars_step_matches_hand_computation():
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = nn.Parameter(torch.tensor([1.0]))
    optimizer = LARS([{"params": [weight]}, {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
                     lr=0.1, momentum=0.9, weight_decay=0.5, trust_coefficient=0.01)
    weight.grad = torch.tensor([[0.5, -2.0]])
    bias.grad = torch.tensor([2.0])
    optimizer.step()
    update = np.array([0.5, -2.0]) + 0.5 * np.array([3.0, 4.0])  # [2, 0] -> norm 2
    trust = 0.01 * 5.0 / (2.0 + 1e-8)
    assert weight.detach().numpy()[0] == pytest.approx(np.array([3.0, 4.0]) - 0.1 * trust * update)
    assert bias.item() == pytest.approx(1.0 - 0.1 * 2.0)  # excluded: plain SGD, no decay, no trust ratio


def test_curves_append_and_truncate(tmp_path):
    path = str(tmp_path / "losses_train.h5")
    for epoch in (1, 2, 3):
        curves.append_epoch(path, epoch, {"loss_train": 10.0 - epoch},
                            {"loss_step_train": [epoch, epoch + 0.5], "loss_avg_train": [epoch, epoch]})
    data = curves.read_curves(path)
    assert list(data["loss_train"]) == [9.0, 8.0, 7.0]
    assert list(data["loss_step_train"]) == [1, 1.5, 2, 2.5, 3, 3.5]
    curves.truncate_after(path, 1)
    data = curves.read_curves(path)
    assert list(data["epoch"]) == [1] and list(data["loss_step_train"]) == [1, 1.5]
