"""The shared loop's pieces: schedules checked by hand, optimizers, LARS, AverageMeter, HDF5 curves."""

import numpy as np
import pytest
import torch
from torch import nn

from nenya.io import curves
from nenya.train_util import LARS
from nenya.params import Params, option_preprocess
from nenya.train_util import (AverageMeter, adjust_learning_rate, epoch_learning_rate, set_optimizer,
                              warmup_learning_rate)


def _opt(**values):
    return option_preprocess(Params(values))


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


def test_lars_with_momentum_over_several_steps_matches_hand_computation():
    """Three steps with changing gradients: decay, trust ratio, momentum buffer, by hand in float64."""
    lr, momentum, decay, trust_coefficient = 0.1, 0.9, 0.5, 0.01
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    bias = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = LARS([{"params": [weight]}, {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
                     lr=lr, momentum=momentum, weight_decay=decay, trust_coefficient=trust_coefficient)
    w, b = np.array([3.0, 4.0]), 1.0
    w_buffer, b_buffer = np.zeros(2), 0.0
    for step, (w_grad, b_grad) in enumerate([([0.5, -2.0], 2.0), ([1.0, 1.0], -1.0), ([-0.3, 0.7], 0.5)]):
        weight.grad = torch.tensor([w_grad], dtype=torch.float64)
        bias.grad = torch.tensor([b_grad], dtype=torch.float64)
        optimizer.step()
        update = np.array(w_grad) + decay * w
        update = update * trust_coefficient * np.linalg.norm(w) / (np.linalg.norm(update) + 1e-8)
        w_buffer = update if step == 0 else momentum * w_buffer + update
        w = w - lr * w_buffer
        b_buffer = b_grad if step == 0 else momentum * b_buffer + b_grad  # excluded: plain momentum SGD
        b = b - lr * b_buffer
        np.testing.assert_allclose(weight.detach().numpy()[0], w, rtol=1e-12)
        assert bias.item() == pytest.approx(b, rel=1e-12)
    assert not np.allclose(w_buffer, update)  # the momentum carried earlier steps


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


def test_iteration_cosine_by_hand():
    opt = _opt(schedule="iter_cosine", learning_rate=1.0, lr_decay_rate=0.1, warm_epochs=2, epochs=6)
    from nenya.train_util import iteration_learning_rate
    assert iteration_learning_rate(opt, 1, 0, 10) == 0.0
    assert iteration_learning_rate(opt, 2, 5, 10) == pytest.approx(0.75)  # 1.5 of 2 warm-up epochs
    # epoch 4 batch 0 = 3 epochs in: 1 of 4 cosine epochs -> 1e-3 + (1 - 1e-3) * (1 + cos(pi/4)) / 2
    assert iteration_learning_rate(opt, 4, 0, 10) == pytest.approx(1e-3 + 0.999 * (1 + np.cos(np.pi / 4)) / 2)
    assert iteration_learning_rate(opt, 7, 0, 10) == pytest.approx(1e-3)


def test_blr_scales_by_effective_batch():
    opt = _opt(blr=1.5e-4, batch_size_train=64, accumulate_grad_batches=4)
    assert opt.learning_rate == pytest.approx(1.5e-4 * 256 / 256)


class _RegressionMethod:
    """A least-squares 'method' on a linear model: per-sample mean loss, no BatchNorm."""

    def loss(self, model, batch):
        inputs, targets = batch
        return ((model(inputs) - targets) ** 2).mean(), {"abs": (model(inputs) - targets).abs().mean()}


def _one_epoch(opt, batch_size, data):
    from torch.utils.data import DataLoader, TensorDataset

    from nenya.train_util import train_model
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(*data), batch_size=batch_size)
    result = train_model(loader, model, _RegressionMethod(), optimizer, 1, opt, torch.device("cpu"))
    return model, result


def test_gradient_accumulation_equals_the_larger_batch():
    data = torch.randn(32, 3), torch.randn(32, 1)
    big, _ = _one_epoch(_opt(epochs=1), 16, data)
    accumulated, result = _one_epoch(_opt(epochs=1, accumulate_grad_batches=2), 8, data)
    for a, b in zip(big.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert result.steps == 4 and "abs" in result.extras
