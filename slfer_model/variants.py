"""The ablation variants of SLFER: which auxiliary heads and attention blocks each one has.

This module imports no torch, so that `slfer compare` and the config loader start quickly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """Auxiliary heads and attention blocks of one variant of the ablation table."""

    segmentation: bool
    parts: bool
    se: bool


# The five rows of the SLFER ablation table (Lv et al., table 1).
VARIANTS: dict[str, Variant] = {
    "baseline": Variant(segmentation=False, parts=False, se=False),
    "ct": Variant(segmentation=False, parts=True, se=False),
    "st": Variant(segmentation=True, parts=False, se=False),
    "ct+st": Variant(segmentation=True, parts=True, se=False),
    "proposed": Variant(segmentation=True, parts=True, se=True),
}


def variant_label(variant: str | None, se: bool | None = None) -> str:
    """Name a variant for logs and tables, adding "without SE" when --no-se removed its SE blocks."""
    if variant is None:
        return "?"
    if variant in VARIANTS and VARIANTS[variant].se and se is False:
        return f"{variant} without SE"
    return variant
