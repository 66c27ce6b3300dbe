"""Loading of torch.save files with weights_only=True, and one-line errors for files that fail to load."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

# Exceptions torch.load raises for a file that is not a torch.save file, or that contains
# objects weights_only=True rejects. The weights-only unpickler raises UnpicklingError, and
# on random bytes torch 2.14 also raised EOFError, IndexError, KeyError and UnicodeDecodeError
# (a ValueError).
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, IndexError, KeyError)


def load_torch_file(path: Path, map_location: str | torch.device, error_type: type[Exception], what: str,
                    fix: str, expected: str = "PyTorch checkpoint") -> Any:
    """Load a torch.save file with weights_only=True, raising `error_type` with one line when that fails.

    Args:
        what: the name of the file's role in messages, such as "checkpoint".
        fix: what the user should pass instead, ending the message.
        expected: the kind of file that was expected, for a file torch cannot load.
    """
    try:
        return read_torch_file(path, map_location)
    except FileNotFoundError as error:
        raise error_type(f"{what} {path} not found; {fix}") from error
    except OSError as error:
        raise error_type(f"cannot read {what} {path}: {error}; {fix}") from error
    except LOAD_ERRORS as error:
        raise error_type(
            f"cannot read {what} {path}: {describe_load_error(path, error, expected)}; {fix}"
        ) from error


def read_torch_file(path: Path, map_location: str | torch.device) -> Any:
    """Load a torch.save file with weights_only=True, which unpickles only tensors and plain containers."""
    with warnings.catch_warnings():
        # torch warns about any pickle protocol other than its own before it fails on such a
        # file, which is noise next to the error raised for it.
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def describe_load_error(path: Path, error: Exception, expected: str = "PyTorch checkpoint") -> str:
    """Explain in one line why read_torch_file failed on `path`, starting with a short cause from torch."""
    return (
        f"{load_error_cause(path, error)}. The file is not a {expected}, or it contains objects other "
        f"than tensors, which slfer does not load because it reads files with weights_only=True"
    )


def load_error_cause(path: Path, error: Exception) -> str:
    """Return the first sentence of torch's reason for `error`, without its advice on weights_only."""
    if isinstance(error, EOFError) and Path(path).stat().st_size == 0:
        return "the file is empty"

    # The weights-only unpickler puts its reason after this marker, between paragraphs
    # about the weights_only default and a link to the documentation.
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines()]
    reasons = [line for line in lines if line and not line.startswith("Check the documentation")]
    if not reasons:
        return type(error).__name__
    cause = reasons[-1].split(". ", 1)[0].rstrip(".")

    # Other errors come from torch's reader stumbling on bytes it cannot parse, and their
    # text ("pop from empty list") means little without the exception's name.
    if isinstance(error, (pickle.UnpicklingError, RuntimeError)):
        return cause
    return f"{type(error).__name__}: {cause}"
