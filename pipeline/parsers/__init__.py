"""Face parsers by name, and the device they run on.

Add a parser by writing a module with a `FaceParser` subclass and a factory
that takes keyword options, then registering the factory in `PARSERS`.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.parsers.base import FaceNotFoundError, FaceParser, ParsedMask, ParserSetupError


def _create_bisenet(**options) -> FaceParser:
    from pipeline.parsers.bisenet import create_bisenet_parser

    return create_bisenet_parser(**options)


def _create_landmarks(**options) -> FaceParser:
    from pipeline.parsers.landmarks import create_landmark_parser

    return create_landmark_parser(**options)


# name -> factory(**options). Every factory accepts and ignores options it does not use.
PARSERS: dict[str, Callable[..., FaceParser]] = {
    "bisenet": _create_bisenet,
    "landmarks": _create_landmarks,
}

__all__ = ["PARSERS", "FaceNotFoundError", "FaceParser", "ParsedMask", "ParserSetupError", "create_parser"]


def create_parser(name: str, **options) -> FaceParser:
    """Build the parser registered as `name`.

    Raises:
        ParserSetupError: for an unknown name or when the parser cannot be set up.
    """
    if name not in PARSERS:
        raise ParserSetupError(f"unknown parser {name!r}; use one of {', '.join(PARSERS)}")
    return PARSERS[name](**options)
