"""The SLFER joint loss L = L_EC + lambda_seg * L_S + lambda_part * L_C."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slfer_model.network import SLFEROutput


@dataclass
class LossTerms:
    """The joint loss and its terms; a term of a head the variant lacks is None."""

    total: torch.Tensor
    expression: torch.Tensor
    segmentation: torch.Tensor | None = None
    parts: torch.Tensor | None = None

    def as_dict(self) -> dict[str, float]:
        """Return the terms that exist as plain floats, keyed loss_total, loss_expression, ..."""
        values = {"total": self.total, "expression": self.expression,
                  "segmentation": self.segmentation, "parts": self.parts}
        return {f"loss_{name}": value.item() for name, value in values.items() if value is not None}


def expression_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_EC: cross-entropy of the expression logits, averaged over the batch."""
    return F.cross_entropy(logits.float(), labels)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """L_S: per-pixel cross-entropy of the part logits [B,8,H,W], averaged over all B*H*W pixels."""
    return F.cross_entropy(logits.float(), masks)


def part_loss(logits: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """L_C: binary cross-entropy of the part logits against the top-n part vector.

    NOTE: Lv et al. (SLFER, eq. 3) write L_C = sum_j (y_j log x_j + (1 - y_j) log(1 - x_j)), a sum over
    the 8 parts without the minus sign, which would be maximised. We take the usual
    negative log-likelihood and average it over parts and batch (binary_cross_entropy_with_logits'
    default), which is their sum divided by 8 and keeps L_C on the scale of L_EC and L_S.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), parts.float())


def joint_loss(
    output: SLFEROutput,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
    parts: torch.Tensor | None,
    lambda_seg: float,
    lambda_part: float,
) -> LossTerms:
    """Compute the SLFER joint loss of one batch.

    Args:
        output: the network's logits; heads absent from the variant are None.
        labels: int64 [B] expression classes.
        masks: int64 [B,H,W] part masks, used when the segmentation head exists.
        parts: [B,8] multi-hot top-n part vectors, used when the part head exists.
        lambda_seg: weight of L_S.
        lambda_part: weight of L_C.

    Returns:
        The total and each term of the heads present.
    """
    expression = expression_loss(output.expression, labels)
    total = expression

    segmentation = None
    if output.segmentation is not None:
        segmentation = segmentation_loss(output.segmentation, masks)
        total = total + lambda_seg * segmentation

    part = None
    if output.parts is not None:
        part = part_loss(output.parts, parts)
        total = total + lambda_part * part

    return LossTerms(total, expression, segmentation, part)
