"""Tests for the EMA of weights and buffers (nenya.models.ema) against a direct computation."""

import pytest
import torch
from torch import nn

from nenya.errors import NenyaError
from nenya.models.ema import ModelEMA, ema_decay


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def train_step(model, seed):
    """Move the weights and the BatchNorm running statistics the way a training step does."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen))
    model.train()
    model(torch.randn(16, 3, generator=gen) * 3 + seed)


def direct_ema(states, decay, warmup=True):
    """EMA of a list of state dicts: copy the first, then e = d_t e + (1 - d_t) m for floats, copy integers."""
    ema = {k: v.clone() for k, v in states[0].items()}
    for t, state in enumerate(states[1:], start=1):
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        for key, value in state.items():
            ema[key] = d * ema[key] + (1 - d) * value if value.is_floating_point() else value.clone()
    return ema


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_of_weights_and_buffers_matches_a_direct_computation(warmup):
    model = small_model()
    ema = ModelEMA(model, decay=0.8, warmup=warmup)
    states = []
    for step in range(6):
        train_step(model, step)
        ema.update(model)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    expected = direct_ema(states, 0.8, warmup)
    got = ema.module.state_dict()
    assert set(got) == set(expected) and "1.running_mean" in got and "1.num_batches_tracked" in got
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)
    # The BatchNorm statistics are averaged, not copied from the model.
    assert not torch.allclose(got["1.running_mean"], model.state_dict()["1.running_mean"])
    assert got["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"] == 6
    assert int(ema.n_averaged) == 6


def test_decay_warms_up_to_its_value():
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.999, 100) == pytest.approx(101 / 110)
    assert ema_decay(0.999, 100000) == 0.999
    assert ema_decay(0.999, 1, warmup=False) == 0.999
    ema = ModelEMA(small_model(), decay=0.5)
    assert ema.current_decay() == 0.0
    ema.update(small_model())
    assert ema.current_decay() == pytest.approx(min(0.5, 2 / 11))


def test_ema_evaluates_its_own_copy_and_never_trains():
    model = small_model()
    ema = ModelEMA(model, decay=0.9)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in ema.module.parameters())
    train_step(model, 0)
    ema.update(model)
    train_step(model, 1)
    ema.eval()
    x = torch.randn(5, 3)
    torch.testing.assert_close(ema(x), ema.module(x))
    model.eval()
    assert not torch.allclose(ema(x), model(x))


def test_state_dict_is_weights_only_and_resumes_exactly(tmp_path):
    model = small_model()
    whole = ModelEMA(model, decay=0.9)
    for step in range(3):
        train_step(model, step)
        whole.update(model)
    torch.save(whole.state_dict(), tmp_path / "ema.pth")
    state = torch.load(tmp_path / "ema.pth", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values()) and "n_averaged" in state
    resumed = ModelEMA(small_model(), decay=0.9)
    resumed.load_state_dict(state)
    for step in range(3, 6):
        train_step(model, step)
        whole.update(model)
        resumed.update(model)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_bad_decay_is_an_error():
    with pytest.raises(NenyaError, match=r"ema_decay must be in \[0, 1\], got 1.5"):
        ModelEMA(small_model(), decay=1.5)
