"""Canonical expression classes and facial parts shared by every stage."""

from __future__ import annotations

# Expression classes in canonical index order 0..6. Every dataset adapter maps
# into this order and checkpoints store it, so never reorder it.
CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# The 8 SLFER facial parts (the segmentation and part-head targets), index 0..7.
PART_NAMES: tuple[str, ...] = ("background", "skin", "eye", "ear", "nose", "mouth", "neck", "hair")

NUM_CLASSES = len(CLASS_NAMES)
NUM_PARTS = len(PART_NAMES)

# Accepted spellings of each class, lower-case. Folder and CSV labels are
# lower-cased before lookup.
CLASS_SYNONYMS: dict[str, int] = {
    "angry": 0, "anger": 0,
    "disgust": 1, "disgusted": 1,
    "fear": 2, "fearful": 2, "afraid": 2,
    "happy": 3, "happiness": 3,
    "sad": 4, "sadness": 4,
    "surprise": 5, "surprised": 5,
    "neutral": 6,
}

# Labels that exist in some datasets but are outside the seven classes. Samples
# carrying them are skipped and counted, never relabelled.
SKIPPED_LABELS: frozenset[str] = frozenset({"contempt"})


class UnknownLabelError(ValueError):
    """A label that is neither one of the seven classes nor a skipped label."""


def class_index(name: str) -> int | None:
    """Map a class name or synonym to its canonical index.

    Args:
        name: label as written in the dataset, any case, surrounding spaces ignored.

    Returns:
        The canonical index, or None for a label in SKIPPED_LABELS.

    Raises:
        UnknownLabelError: for any other label.
    """
    key = name.strip().lower()
    if key in CLASS_SYNONYMS:
        return CLASS_SYNONYMS[key]
    if key in SKIPPED_LABELS:
        return None
    raise UnknownLabelError(
        f"label {name!r} is not one of {', '.join(CLASS_NAMES)} "
        f"(synonyms accepted: {', '.join(sorted(set(CLASS_SYNONYMS) - set(CLASS_NAMES)))}; "
        f"skipped: {', '.join(sorted(SKIPPED_LABELS))})"
    )
