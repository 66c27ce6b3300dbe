"""The SLFER network and its ablation variants."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from pipeline.labels import NUM_CLASSES, NUM_PARTS
from slfer_model.backbone import ResNet18Backbone
from slfer_model.heads import ExpressionHead, PartHead, SegmentationHead
from slfer_model.variants import VARIANTS, Variant

__all__ = ["VARIANTS", "InferenceModel", "SLFERNet", "SLFEROutput", "Variant", "build_model"]


class SLFEROutput(NamedTuple):
    """Logits of each head; a head absent from the variant gives None."""

    expression: torch.Tensor
    segmentation: torch.Tensor | None
    parts: torch.Tensor | None


class InferenceModel(nn.Module):
    """Backbone and expression head only: the network SLFER runs at test time."""

    def __init__(self, backbone: ResNet18Backbone, expression_head: ExpressionHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.expression_head = expression_head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.expression_head(self.backbone(images).layer4)


class SLFERNet(nn.Module):
    """SE-ResNet-18 backbone with the expression head and, per variant, the ST and CT heads."""

    def __init__(self, variant: str = "proposed", num_classes: int = NUM_CLASSES, num_parts: int = NUM_PARTS,
                 se: bool | None = None) -> None:
        super().__init__()
        config = VARIANTS[variant]
        self.variant = variant
        self.se = config.se if se is None else se
        self.backbone = ResNet18Backbone(se=self.se)
        self.expression_head = ExpressionHead(num_classes)
        self.segmentation_head = SegmentationHead(num_parts) if config.segmentation else None
        self.part_head = PartHead(num_parts) if config.parts else None

    def forward(self, images: torch.Tensor) -> SLFEROutput:
        features = self.backbone(images)
        expression = self.expression_head(features.layer4)

        segmentation = None
        if self.segmentation_head is not None:
            segmentation = self.segmentation_head(features.layer3, features.layer4, images.shape[-2:])

        parts = None
        if self.part_head is not None:
            parts = self.part_head(features.layer4)

        return SLFEROutput(expression, segmentation, parts)

    def inference_model(self) -> InferenceModel:
        """Return the backbone and expression head as one module, sharing this model's weights."""
        return InferenceModel(self.backbone, self.expression_head)


def build_model(variant: str = "proposed", num_classes: int = NUM_CLASSES, num_parts: int = NUM_PARTS,
                se: bool | None = None) -> SLFERNet:
    """Build an untrained SLFER network of one ablation variant.

    `se` adds (True) or removes (False) the SE blocks, overriding the
    variant. None keeps the variant's choice.

    Raises:
        ValueError: for a variant name not in VARIANTS.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    return SLFERNet(variant, num_classes, num_parts, se=se)
