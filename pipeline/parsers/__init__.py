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

__all__ = ["PARSERS", "FaceNotFoundError", "FaceParser", "ParsedMask", "ParserSetupError", "create_parser",
           "resolve_device"]


def create_parser(name: str, **options) -> FaceParser:
    """Build the parser registered as `name`.

    Raises:
        ParserSetupError: for an unknown name or when the parser cannot be set up.
    """
    if name not in PARSERS:
        raise ParserSetupError(f"unknown parser {name!r}; use one of {', '.join(PARSERS)}")
    return PARSERS[name](**options)


def resolve_device(device: str):
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a torch.device that exists here.

    Raises:
        ParserSetupError: for an unknown device name or a CUDA device that is not present.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ParserSetupError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ParserSetupError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ParserSetupError(f"device {device!r} requested, but CUDA is not available here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ParserSetupError(
                f"device {device!r} requested, but only {torch.cuda.device_count()} CUDA devices are present"
            )
    return resolved
