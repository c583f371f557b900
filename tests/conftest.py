"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED_ASSIGNMENT = Path(__file__).resolve().parent / "seed_assignment.md"


def find_mnist_dir() -> Path | None:
    for candidate in (os.environ.get("MNIST_DIR"), ROOT.parent / "shared/datasets/mnist"):
        labels = Path(candidate or "/nonexistent") / "train-labels-idx1-ubyte"
        if candidate and (labels.exists() or labels.with_suffix(".gz").exists()):
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder; tests that need it skip without it, except in CI where they fail."""
    found = find_mnist_dir()
    if found is None:
        message = "MNIST not found: set MNIST_DIR to a folder holding the four IDX files"
        if os.environ.get("REQUIRE_MNIST"):
            pytest.fail(message)
        pytest.skip(message)
    return found
