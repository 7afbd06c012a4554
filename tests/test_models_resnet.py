"""Tests for the SupCon ResNets, projection heads and the model registry."""

import pytest
import torch
from torch import nn

from nenya.errors import NenyaError
from nenya.models import build_model
from nenya.registry import MODELS as MODEL_BUILDERS
from nenya.models.heads import projection_head
from nenya.models.resnet_big import SupConResNet

DIM_IN = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


@pytest.mark.parametrize(
    "name, nchannels, size, batch",
    [
        ("resnet18", 1, 8, 3),
        ("resnet18", 3, 32, 2),
        ("resnet18", 5, 64, 2),
        ("resnet34", 1, 8, 2),
        ("resnet34", 3, 16, 2),
        ("resnet50", 1, 8, 2),
        ("resnet50", 3, 16, 2),
        ("resnet101", 1, 8, 2),
    ],
)
def test_output_and_encoding_shapes(name, nchannels, size, batch):
    model = SupConResNet(name=name, nchannels=nchannels, feat_dim=16)
    x = torch.randn(batch, nchannels, size, size)
    with torch.no_grad():
        projections = model(x)
        features = model.encode(x)
    assert model.dim_in == DIM_IN[name]
    assert projections.shape == (batch, 16)
    assert features.shape == (batch, DIM_IN[name])
    torch.testing.assert_close(projections.norm(dim=1), torch.ones(batch))


def test_head_kinds_have_the_right_layers():
    mlp = projection_head("mlp", 512, 128)
    linear = projection_head("linear", 512, 128)
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (mlp[0].in_features, mlp[0].out_features) == (512, 512)
    assert (mlp[2].in_features, mlp[2].out_features) == (512, 128)
    assert isinstance(linear, nn.Linear)
    assert (linear.in_features, linear.out_features) == (512, 128)


def test_linear_head_model_outputs_unit_vectors():
    model = SupConResNet(name="resnet18", nchannels=1, head="linear", feat_dim=8)
    assert isinstance(model.head, nn.Linear)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_unknown_head_names_bad_value_and_choices():
    with pytest.raises(NenyaError, match="'mlp2'.*mlp, linear"):
        projection_head("mlp2", 512, 128)


def test_gradient_reaches_first_conv():
    model = SupConResNet(name="resnet18", nchannels=1, feat_dim=8)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    first_conv = next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0


def test_unknown_resnet_name_raises():
    with pytest.raises(NenyaError, match="'resnet20'.*resnet18, resnet34, resnet50, resnet101"):
        SupConResNet(name="resnet20")


def cifar_resnet18_encoder_parameter_count(nchannels: int) -> int:
    """Count parameters of a CIFAR-stem ResNet-18 without fc from layer shapes alone."""

    def conv(c_in, c_out, k):
        return c_in * c_out * k * k

    def bn(c):
        return 2 * c

    def basic_block(c_in, c_out, downsample):
        count = conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out)
        if downsample:
            count += conv(c_in, c_out, 1) + bn(c_out)
        return count

    total = conv(nchannels, 64, 3) + bn(64)
    c_in = 64
    for c_out in (64, 128, 256, 512):
        total += basic_block(c_in, c_out, downsample=c_in != c_out)
        total += basic_block(c_out, c_out, downsample=False)
        c_in = c_out
    return total


def test_resnet18_encoder_parameter_count():
    expected = cifar_resnet18_encoder_parameter_count(3)
    assert expected == 11_168_832
    for nchannels in (1, 3):
        model = SupConResNet(name="resnet18", nchannels=nchannels)
        count = sum(p.numel() for p in model.encoder.parameters())
        assert count == cifar_resnet18_encoder_parameter_count(nchannels)


def test_registry_builds_every_resnet():
    assert {"resnet18", "resnet34", "resnet50", "resnet101"} <= set(MODEL_BUILDERS)
    model = build_model("resnet18", nchannels=1, head="linear", feat_dim=4)
    assert isinstance(model, SupConResNet)
    assert model.encoder.stem[0].in_channels == 1
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 4
    big = build_model("resnet50", nchannels=1, feat_dim=4)
    assert big.dim_in == 2048


def test_registry_unknown_name_suggests_closest():
    with pytest.raises(NenyaError, match="'resnet19'.*did you mean 'resnet18'"):
        build_model("resnet19")


def test_registry_unknown_name_without_close_match_lists_choices():
    with pytest.raises(NenyaError, match="'xception'.*resnet18") as info:
        build_model("xception")  # ('transformer' is now close to 'dformer3d')
    assert "did you mean" not in str(info.value)
