"""The joint loss against hand computations on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch

from slfer_model.losses import joint_loss
from slfer_model.network import SLFEROutput

# Two images, 3 expression classes, 2 parts, 1x2 pixels: small enough to compute by hand.
EXPRESSION = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
LABELS = torch.tensor([0, 2])
SEGMENTATION = torch.tensor([  # [B, parts, H, W]
    [[[1.0, -1.0]], [[0.0, 2.0]]],
    [[[0.0, 0.0]], [[3.0, -2.0]]],
])
MASKS = torch.tensor([[[0, 1]], [[1, 0]]])
PARTS_LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
PARTS = torch.tensor([[1.0, 1.0], [0.0, 1.0]])


def cross_entropy(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target]."""
    return -(logits[target] - math.log(sum(math.exp(value) for value in logits)))


def binary_cross_entropy(logit: float, target: float) -> float:
    """-(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))."""
    probability = 1 / (1 + math.exp(-logit))
    return -(target * math.log(probability) + (1 - target) * math.log(1 - probability))


def hand_expression() -> float:
    return (cross_entropy([2.0, 0.0, -1.0], 0) + cross_entropy([0.5, 0.5, 1.0], 2)) / 2


def hand_segmentation() -> float:
    pixels = [
        ([1.0, 0.0], 0), ([-1.0, 2.0], 1),  # image 0, pixels (0, 0) and (0, 1)
        ([0.0, 3.0], 1), ([0.0, -2.0], 0),  # image 1
    ]
    return sum(cross_entropy(logits, target) for logits, target in pixels) / len(pixels)


def hand_parts() -> float:
    pairs = [(0.0, 1.0), (2.0, 1.0), (-1.0, 0.0), (1.0, 1.0)]
    return sum(binary_cross_entropy(logit, target) for logit, target in pairs) / len(pairs)


def test_joint_loss_terms():
    output = SLFEROutput(EXPRESSION, SEGMENTATION, PARTS_LOGITS)

    terms = joint_loss(output, LABELS, MASKS, PARTS, lambda_seg=0.5, lambda_part=0.25)

    assert terms.expression.item() == pytest.approx(hand_expression(), rel=1e-6)
    assert terms.segmentation.item() == pytest.approx(hand_segmentation(), rel=1e-6)
    assert terms.parts.item() == pytest.approx(hand_parts(), rel=1e-6)


def test_joint_loss_total():
    output = SLFEROutput(EXPRESSION, SEGMENTATION, PARTS_LOGITS)

    terms = joint_loss(output, LABELS, MASKS, PARTS, lambda_seg=0.5, lambda_part=0.25)

    expected = hand_expression() + 0.5 * hand_segmentation() + 0.25 * hand_parts()
    assert terms.total.item() == pytest.approx(expected, rel=1e-6)


def test_baseline_has_only_expression_term():
    output = SLFEROutput(EXPRESSION, None, None)

    terms = joint_loss(output, LABELS, MASKS, PARTS, lambda_seg=0.5, lambda_part=0.5)

    assert terms.as_dict().keys() == {"loss_total", "loss_expression"}
    assert terms.total.item() == pytest.approx(hand_expression(), rel=1e-6)


def test_ct_variant_terms():
    output = SLFEROutput(EXPRESSION, None, PARTS_LOGITS)

    terms = joint_loss(output, LABELS, None, PARTS, lambda_seg=0.5, lambda_part=0.5)

    assert terms.segmentation is None
    assert terms.total.item() == pytest.approx(hand_expression() + 0.5 * hand_parts(), rel=1e-6)


def test_loss_of_bf16_logits_is_float32():
    output = SLFEROutput(EXPRESSION.bfloat16(), SEGMENTATION.bfloat16(), PARTS_LOGITS.bfloat16())

    terms = joint_loss(output, LABELS, MASKS, PARTS, lambda_seg=0.5, lambda_part=0.5)

    assert terms.total.dtype == torch.float32
