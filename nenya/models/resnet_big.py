"""ResNet-18/34/50/101 encoders with a CIFAR-style stem, and the SupCon model built on them.

The stem is a 3x3 stride-1 convolution with no max-pool, so small images (8x8 digits,
32x32 CIFAR, 64x64 cut-outs) keep enough spatial resolution through the four stages.
"""

import torch
import torch.nn.functional as F
from torch import nn

from nenya.errors import NenyaError
from nenya.registry import register_model
from nenya.models.heads import ProjectedEncoder


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection_shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual shortcut (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = projection_shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 conv + BN to match them."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResNet(nn.Module):
    """ResNet encoder: CIFAR stem, four stages, global average pool; outputs [B, dim_out]."""

    def __init__(self, block: type, num_blocks: list[int], nchannels: int = 3,
                 zero_init_residual: bool = False):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(nchannels, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.in_planes = 64
        self.layer1 = self._make_stage(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_stage(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_stage(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_stage(block, 512, num_blocks[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dim_out = 512 * block.expansion

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            # Each residual branch then starts as zero, so every block starts as the identity.
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def _make_stage(self, block: type, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            blocks.append(block(self.in_planes, planes, block_stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.pool(out), 1)


RESNET_CONFIGS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


def resnet_encoder(name: str, nchannels: int = 3) -> ResNet:
    """Build the ResNet encoder called `name` (resnet18/34/50/101) for `nchannels` inputs."""
    if name not in RESNET_CONFIGS:
        raise NenyaError(f"unknown ResNet {name!r}; choose from: {', '.join(RESNET_CONFIGS)}")
    block, num_blocks = RESNET_CONFIGS[name]
    return ResNet(block, num_blocks, nchannels=nchannels)


class SupConResNet(ProjectedEncoder):
    """ResNet encoder + projection head; forward returns L2-normalised projections [B, feat_dim]."""

    def __init__(self, name: str = "resnet18", nchannels: int = 3, head: str = "mlp",
                 feat_dim: int = 128):
        super().__init__(resnet_encoder(name, nchannels), head, feat_dim)


@register_model("resnet18")
def supcon_resnet18(**kwargs) -> SupConResNet:
    """SupCon ResNet-18 (dim_in 512)."""
    return SupConResNet(name="resnet18", **kwargs)


@register_model("resnet34")
def supcon_resnet34(**kwargs) -> SupConResNet:
    """SupCon ResNet-34 (dim_in 512)."""
    return SupConResNet(name="resnet34", **kwargs)


@register_model("resnet50")
def supcon_resnet50(**kwargs) -> SupConResNet:
    """SupCon ResNet-50 (dim_in 2048)."""
    return SupConResNet(name="resnet50", **kwargs)


@register_model("resnet101")
def supcon_resnet101(**kwargs) -> SupConResNet:
    """SupCon ResNet-101 (dim_in 2048)."""
    return SupConResNet(name="resnet101", **kwargs)
