"""The SLFER network: head shapes, variants and the inference model."""

from __future__ import annotations

import pytest
import torch
import torchvision

from slfer_model.network import VARIANTS, build_model

# Output channels of the 8 BasicBlocks of ResNet-18, in order.
BLOCK_CHANNELS = (64, 64, 128, 128, 256, 256, 512, 512)


def head_parameters(model, prefix: str) -> int:
    """Number of parameters whose name starts with `prefix`."""
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefix))


def se_parameters(channels: int, reduction: int = 16) -> int:
    """Parameters of one SE block: two 1x1 convolutions with biases."""
    hidden = channels // reduction
    return channels * hidden + hidden + hidden * channels + channels


@pytest.fixture(scope="module")
def proposed():
    torch.manual_seed(0)
    return build_model("proposed").eval()


@pytest.mark.parametrize("side", [224, 96])
def test_head_shapes(proposed, side):
    with torch.no_grad():
        output = proposed(torch.randn(2, 3, side, side))

    assert output.expression.shape == (2, 7)
    assert output.segmentation.shape == (2, 8, side, side)
    assert output.parts.shape == (2, 8)


def test_segmentation_odd_size(proposed):
    with torch.no_grad():
        output = proposed(torch.randn(1, 3, 100, 75))

    assert output.segmentation.shape == (1, 8, 100, 75)


@pytest.mark.parametrize("variant, segmentation, parts", [
    ("baseline", False, False), ("ct", False, True), ("st", True, False), ("ct+st", True, True),
])
def test_variant_heads(variant, segmentation, parts):
    model = build_model(variant).eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 64))

    assert (output.segmentation is not None) == segmentation
    assert (output.parts is not None) == parts
    assert (head_parameters(model, "segmentation_head.") > 0) == segmentation
    assert (head_parameters(model, "part_head.") > 0) == parts


def test_baseline_has_no_auxiliary_weights():
    names = build_model("baseline").state_dict().keys()

    assert not [name for name in names if name.startswith(("segmentation_head.", "part_head."))]
    assert not [name for name in names if ".se." in name]


def test_se_parameter_count():
    with_se = sum(p.numel() for p in build_model("proposed").parameters())
    without_se = sum(p.numel() for p in build_model("ct+st").parameters())

    assert with_se - without_se == sum(se_parameters(c) for c in BLOCK_CHANNELS)


def test_proposed_without_se_is_ct_st():
    without_se = build_model("proposed", se=False)

    assert without_se.se is False
    assert without_se.state_dict().keys() == build_model("ct+st").state_dict().keys()


def test_parameter_counts_ordered():
    counts = {variant: sum(p.numel() for p in build_model(variant).parameters()) for variant in VARIANTS}

    assert counts["baseline"] < counts["ct"] < counts["ct+st"] < counts["proposed"]
    assert counts["baseline"] < counts["st"] < counts["ct+st"]


def test_backbone_keys_are_torchvision():
    torchvision_keys = {key for key in torchvision.models.resnet18().state_dict() if not key.startswith("fc.")}
    backbone_keys = set(build_model("proposed").backbone.state_dict())

    assert torchvision_keys <= backbone_keys
    assert {key for key in backbone_keys - torchvision_keys if ".se." not in key} == set()


def test_inference_model_has_no_auxiliary_heads(proposed):
    names = proposed.inference_model().state_dict().keys()

    assert not [name for name in names if name.startswith(("segmentation_head.", "part_head."))]


def test_inference_model_matches_expression(proposed):
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = proposed(images).expression
        logits = proposed.inference_model()(images)

    assert torch.equal(logits, expected)


def test_unknown_variant():
    with pytest.raises(ValueError, match="baseline"):
        build_model("resnet")
