"""Pixel counts of the 8 facial parts in a mask and the top-n part vector."""

from __future__ import annotations

import numpy as np

from pipeline.labels import NUM_PARTS, PART_NAMES

BACKGROUND = PART_NAMES.index("background")


def part_pixel_counts(mask: np.ndarray) -> np.ndarray:
    """Count the pixels of each part in a mask of part indices.

    Args:
        mask: HxW uint8 array of values 0..7.

    Returns:
        int64 array of 8 counts, indexed like PART_NAMES.

    Raises:
        ValueError: when the mask contains a value that is not a part index.
    """
    counts = np.bincount(mask.ravel(), minlength=NUM_PARTS)
    if counts.size > NUM_PARTS:
        invalid = sorted(int(value) for value in np.unique(mask) if value >= NUM_PARTS)
        raise ValueError(f"mask contains values {invalid}, but part indices run from 0 to {NUM_PARTS - 1}")
    return counts.astype(np.int64)


def top_n_parts(pixel_counts: np.ndarray, n: int) -> np.ndarray:
    """Build the multi-hot target of the part head from per-part pixel counts.

    The n non-background parts with the most pixels get 1. Equal counts are
    broken towards the lower part index, a part with zero pixels never gets 1
    (so fewer than n ones appear when fewer parts are visible), and the
    background never gets 1.

    Args:
        pixel_counts: 8 pixel counts indexed like PART_NAMES.
        n: number of parts to mark, at least 1.

    Returns:
        uint8 array of 8 values, each 0 or 1.
    """
    counts = np.asarray(pixel_counts, dtype=np.int64)
    if counts.shape != (NUM_PARTS,):
        raise ValueError(f"expected {NUM_PARTS} pixel counts, got an array of shape {counts.shape}")
    if n < 1:
        raise ValueError(f"top-n must be at least 1, got {n}")

    candidates = [part for part in range(NUM_PARTS) if part != BACKGROUND and counts[part] > 0]
    # Python's sort is stable, so parts with equal counts keep ascending index order.
    ranked = sorted(candidates, key=lambda part: -counts[part])

    vector = np.zeros(NUM_PARTS, dtype=np.uint8)
    vector[ranked[:n]] = 1
    return vector
