"""The three task heads of SLFER: expression (ECT), segmentation (ST) and part classification (CT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slfer_model.backbone import LAYER3_CHANNELS, LAYER4_CHANNELS

# NOTE: Lv et al. (SLFER) give the number of FC layers of ECT (3) and CT (2) but not their
# widths, activations or dropout. These hidden sizes, with ReLU and no dropout, are
# our choice.
EXPRESSION_HIDDEN = (256, 128)
PART_HIDDEN = 256

# NOTE: Lv et al. name the ST layers (fuse layer4 upsampled with layer3, conv-BN-ReLU,
# upsample, then three upsample-conv-BN-ReLU pairs, classify) but not their widths or
# kernel sizes. We use 3x3 convolutions halving the channels at each step.
SEGMENTATION_CHANNELS = (256, 128, 64, 32)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution, batch normalisation and ReLU, keeping the spatial size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ExpressionHead(nn.Module):
    """ECT: global average pool of layer4, then three FC layers to the expression logits."""

    def __init__(self, num_classes: int, hidden: tuple[int, int] = EXPRESSION_HIDDEN) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(LAYER4_CHANNELS, hidden[0]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, layer4: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(layer4, 1), 1))


class PartHead(nn.Module):
    """CT: global average pool of layer4, then two FC layers to one logit per part.

    The sigmoid output of SLFER's CT is applied inside the loss (binary cross-entropy with logits).
    """

    def __init__(self, num_parts: int, hidden: int = PART_HIDDEN) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(LAYER4_CHANNELS, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_parts),
        )

    def forward(self, layer4: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(layer4, 1), 1))


class SegmentationHead(nn.Module):
    """ST: a decoder from layer4 and layer3 to per-pixel part logits at the input resolution.

    layer4 is upsampled to layer3's size and concatenated with it, then conv-BN-ReLU,
    an upsampling, and three (upsampling, conv-BN-ReLU) pairs bring the map from stride
    16 to stride 1, where a 1x1 convolution classifies each pixel. Each upsampling is
    bilinear to an explicit size, so inputs whose side is not a multiple of 32 work.
    """

    def __init__(self, num_parts: int, channels: tuple[int, ...] = SEGMENTATION_CHANNELS) -> None:
        super().__init__()
        self.fuse = conv_bn_relu(LAYER4_CHANNELS + LAYER3_CHANNELS, channels[0])
        self.decode = nn.ModuleList(
            conv_bn_relu(channels[i], channels[i + 1]) for i in range(len(channels) - 1)
        )
        self.classifier = nn.Conv2d(channels[-1], num_parts, kernel_size=1)

    def forward(self, layer3: torch.Tensor, layer4: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        x = upsample(layer4, layer3.shape[-2:])
        x = self.fuse(torch.cat([x, layer3], dim=1))

        # Strides 8, 4, 2 and 1 of the input: one upsampling after the fusion,
        # then one before each decoder convolution.
        sizes = [stride_size(input_size, stride) for stride in (8, 4, 2, 1)]
        x = upsample(x, sizes[0])
        for size, block in zip(sizes[1:], self.decode):
            x = block(upsample(x, size))

        return self.classifier(x)


def stride_size(input_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Return the side lengths of a feature map at `stride`, rounded up as convolutions do."""
    return tuple(-(-side // stride) for side in input_size)


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """Resize a feature map bilinearly to `size` (height, width)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
