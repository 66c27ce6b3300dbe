"""The map from a parser's own labels to the 8 SLFER parts, read from a JSON file.

A class map file states the parser label order it was written for
(`source_labels`), the part names it maps into (`target_parts`) and, for each
source label name, the part it becomes (`map`). Loading checks all three
against the parser and `PART_NAMES`, so a map written for another label order
is rejected instead of silently applied to the wrong labels.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.labels import PART_NAMES

# facexlib's BiSeNet label order (inherited from face-parsing.PyTorch). It is not
# the order of the CelebAMask-HQ README, which lists the classes differently.
BISENET_LABELS: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eyeglasses", "l_ear", "r_ear", "earring",
    "nose", "mouth", "u_lip", "l_lip", "neck", "necklace", "cloth", "hair", "hat",
)

DEFAULT_CLASS_MAP_FILE = "bisenet19_to_slfer8.json"


class ClassMapError(ValueError):
    """A class map file that cannot be read or does not fit the parser."""


@dataclass(frozen=True)
class ClassMap:
    """A validated map from parser labels to parts.

    Attributes:
        source: the file it was read from.
        source_labels: the parser label names, in the parser's index order.
        lookup: uint8 array indexed by parser label, giving the part index.
    """

    source: Path
    source_labels: tuple[str, ...]
    lookup: np.ndarray

    def to_json(self) -> dict:
        """Describe the map for parser.json: each source label and the part it becomes."""
        return {
            "source": str(self.source),
            "source_labels": list(self.source_labels),
            "target_parts": list(PART_NAMES),
            "map": {label: PART_NAMES[part] for label, part in zip(self.source_labels, self.lookup.tolist())},
        }


def data_dir() -> Path:
    """Locate slfer's `data/` folder: beside the source tree, else under sys.prefix.

    An editable install or a checkout has `data/` next to `pipeline/`; a regular
    install copies the files to `<sys.prefix>/share/slfer/data` (setup.cfg data_files).
    """
    source_tree_data = Path(__file__).resolve().parents[2] / "data"
    if (source_tree_data / DEFAULT_CLASS_MAP_FILE).is_file():
        return source_tree_data
    return Path(sys.prefix) / "share" / "slfer" / "data"


def default_class_map_path() -> Path:
    """Return the path of the 19-to-8 map shipped with slfer."""
    return data_dir() / DEFAULT_CLASS_MAP_FILE


def load_class_map(path: str | os.PathLike | None = None,
                   parser_labels: tuple[str, ...] = BISENET_LABELS) -> ClassMap:
    """Read and validate a class map file.

    Args:
        path: the JSON file; None reads the map shipped with slfer.
        parser_labels: the label names of the parser the map will be applied to.

    Returns:
        The validated map with a lookup table as long as `parser_labels`.

    Raises:
        ClassMapError: when the file is missing or malformed, was written for
            another label order, names an unknown part or leaves a label unmapped.
    """
    path = Path(path) if path is not None else default_class_map_path()
    document = _read_json(path)

    source_labels = _string_list(document, "source_labels", path)
    _check_label_order(source_labels, parser_labels, path)
    target_parts = _string_list(document, "target_parts", path)
    if tuple(target_parts) != PART_NAMES:
        raise ClassMapError(
            f"class map {path} has target_parts {target_parts}, but slfer's parts are {list(PART_NAMES)} "
            f"in this order; fix target_parts and the map values"
        )

    mapping = document.get("map")
    if not isinstance(mapping, dict):
        raise ClassMapError(f"class map {path} has no 'map' object from source label to part name")
    return ClassMap(path, tuple(source_labels), _build_lookup(mapping, source_labels, path))


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClassMapError(f"class map file {path} not found; pass an existing file to --class-map") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClassMapError(f"class map file {path} is not readable JSON: {error}") from None
    if not isinstance(document, dict):
        raise ClassMapError(f"class map file {path} must contain a JSON object, not {type(document).__name__}")
    return document


def _string_list(document: dict, key: str, path: Path) -> list[str]:
    values = document.get(key)
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ClassMapError(f"class map {path} needs '{key}' as a list of names")
    return values


def _check_label_order(source_labels: list[str], parser_labels: tuple[str, ...], path: Path) -> None:
    """Reject a map whose stated label order is not exactly the parser's."""
    if len(source_labels) != len(parser_labels):
        raise ClassMapError(
            f"class map {path} is written for {len(source_labels)} parser labels, but the parser has "
            f"{len(parser_labels)}: {', '.join(parser_labels)}"
        )
    for index, (stated, actual) in enumerate(zip(source_labels, parser_labels)):
        if stated != actual:
            raise ClassMapError(
                f"class map {path} expects label {index} to be {stated!r}, but the parser's label {index} "
                f"is {actual!r}; the map was written for another label order. The parser's order is: "
                f"{', '.join(parser_labels)}"
            )


def _build_lookup(mapping: dict, source_labels: list[str], path: Path) -> np.ndarray:
    """Turn {source label: part name} into a lookup table indexed by source label."""
    missing = [label for label in source_labels if label not in mapping]
    if missing:
        raise ClassMapError(f"class map {path} does not map the labels {missing}; map each to one of {list(PART_NAMES)}")
    unknown_labels = sorted(set(mapping) - set(source_labels))
    if unknown_labels:
        raise ClassMapError(f"class map {path} maps labels {unknown_labels} that are not in its source_labels")

    lookup = np.zeros(len(source_labels), dtype=np.uint8)
    for index, label in enumerate(source_labels):
        part = mapping[label]
        if part not in PART_NAMES:
            raise ClassMapError(
                f"class map {path} maps label {label!r} to {part!r}, which is not a part; "
                f"use one of {list(PART_NAMES)}"
            )
        lookup[index] = PART_NAMES.index(part)
    return lookup
