"""SE-ResNet-18: torchvision's ResNet-18 with squeeze-and-excitation on each residual branch."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

SE_REDUCTION = 16
# Channels of the layer3 and layer4 outputs of ResNet-18.
LAYER3_CHANNELS = 256
LAYER4_CHANNELS = 512


class SqueezeExcitation(nn.Module):
    """Channel attention of Hu, Shen and Sun (2018): global pool, FC, ReLU, FC, sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return x * scale


class SEBasicBlock(BasicBlock):
    """A torchvision BasicBlock whose residual branch is rescaled by SE after bn2, before the addition.

    The SE layers live in the extra submodule `se`, so every torchvision state-dict key
    of the block keeps its name and pretrained ResNet-18 weights load unchanged.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.se = SqueezeExcitation(self.bn2.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)

        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.se(out)

        return self.relu(out + identity)


class BackboneFeatures(NamedTuple):
    """Feature maps of the backbone: layer3 (stride 16, 256 channels) and layer4 (stride 32, 512)."""

    layer3: torch.Tensor
    layer4: torch.Tensor


class ResNet18Backbone(nn.Module):
    """ResNet-18 without its pooling and fc layers, optionally with SE blocks.

    Submodule names (conv1, bn1, layer1 .. layer4) are torchvision's, so a torchvision
    ResNet-18 state dict loads with `load_state_dict(..., strict=False)`, its fc.* keys
    being the only unexpected ones.
    """

    def __init__(self, se: bool = True) -> None:
        super().__init__()
        resnet = ResNet(SEBasicBlock if se else BasicBlock, [2, 2, 2, 2])
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.se = se

    def forward(self, images: torch.Tensor) -> BackboneFeatures:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer2(self.layer1(x))
        layer3 = self.layer3(x)
        layer4 = self.layer4(layer3)
        return BackboneFeatures(layer3, layer4)
