"""Shared fixtures: the FER2013 image folders and small helpers for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# FER2013 exported as ROOT/<split>/<class>/*.jpg, kept outside the repository
# because its images may not be redistributed. SLFER_FER2013 overrides the path.
FER2013_ROOT = Path(os.environ.get("SLFER_FER2013", REPO_ROOT.parent / "shared" / "data" / "fer2013"))


@pytest.fixture(scope="session")
def fer2013_root() -> Path:
    """Root of the FER2013 folders; skips the test when they are absent."""
    if not (FER2013_ROOT / "train").is_dir():
        pytest.skip(f"FER2013 image folders not found at {FER2013_ROOT}; set SLFER_FER2013 to their root")
    return FER2013_ROOT


@pytest.fixture(scope="session")
def fer2013_images(fer2013_root: Path) -> dict[str, list[Path]]:
    """The first 20 training images of each FER2013 class, sorted by name."""
    images = {}
    for class_dir in sorted((fer2013_root / "train").iterdir()):
        images[class_dir.name] = sorted(class_dir.glob("*.jpg"))[:20]
    return images


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `slfer ARGS` in a subprocess, as a user would, and capture its output."""
    console_script = Path(sys.executable).parent / "slfer"
    command = [str(console_script)] if console_script.exists() else [sys.executable, str(REPO_ROOT / "cli.py")]
    return subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )
