"""Run a benchmark script the way its README says, and return what it printed."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def run_bench(script: str, *args: str, timeout: float) -> list[str]:
    """The lines `python bench/SCRIPT ARGS...` printed to stdout; it must exit 0."""
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()
