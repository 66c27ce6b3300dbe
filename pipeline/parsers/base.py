"""The face parser interface and the errors parsers raise.

A parser works in two steps so that decoding overlaps inference.
`prepare(image)` runs in the decode worker processes on one decoded RGB image.
`parse_batch(prepared, sizes)` runs in the main process on a list of prepared
images and returns one `ParsedMask` per image.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pipeline.labels import PART_NAMES


class ParserSetupError(RuntimeError):
    """A parser that cannot be created: missing weights, a bad device, a missing model file."""


class FaceNotFoundError(ValueError):
    """An image in which the parser found no face; the image fails and gets no mask."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hash a file in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ParsedMask:
    """The result for one image.

    Attributes:
        parts: HxW uint8 mask of part indices at the source image size.
        raw: HxW uint8 mask of the parser's own labels, or None when not requested.
    """

    parts: np.ndarray
    raw: np.ndarray | None = None


class FaceParser(ABC):
    """A face parser: a picklable `prepare` step for workers and a batched `parse_batch` step.

    Attributes:
        parser_id: the name written to reports and parser.json.
        weights_sha256: sha256 of the weights file, or None for a parser without one.
        visible_parts: the part names this parser can assign; the others never appear.
    """

    parser_id: str
    weights_sha256: str | None
    visible_parts: tuple[str, ...]

    @property
    def default_batch_size(self) -> int:
        """Images per `parse_batch` call when the user gives no --batch-size."""
        return 16

    @property
    def default_workers(self) -> int:
        """Decode worker processes when the user gives no --workers: up to 4, one per core."""
        return min(4, os.cpu_count() or 1)

    @property
    @abstractmethod
    def prepare(self) -> Callable[[np.ndarray], Any]:
        """Return a picklable callable that turns one decoded RGB image into a `parse_batch` input.

        It runs in worker processes and may raise FaceNotFoundError.
        """

    @abstractmethod
    def parse_batch(self, prepared: list[Any], sizes: list[tuple[int, int]]) -> list[ParsedMask]:
        """Parse prepared images whose source sizes (height, width) are `sizes`."""

    def settings(self) -> dict:
        """Settings that change the masks; a rerun into the same folder must use the same ones."""
        return {}

    def metadata(self) -> dict:
        """Describe the parser for parser.json."""
        return {
            "parser": self.parser_id,
            "weights_sha256": self.weights_sha256,
            "settings": self.settings(),
            "part_names": list(PART_NAMES),
            "visible_parts": list(self.visible_parts),
            "hidden_parts": [part for part in PART_NAMES if part not in self.visible_parts],
        }
