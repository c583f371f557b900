"""`bench/preprocess.py` end to end, briefly: every kind of upload timed four ways, and the
phone photos' floor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench.runner import run_bench


@pytest.mark.slow
def test_preprocess_bench_runs_and_reports_a_ratio(mnist_dir: Path) -> None:
    lines = run_bench(
        "preprocess.py", "--mnist-dir", str(mnist_dir), "--rounds", "1", "--seconds", "0.01",
        "--before", "HEAD",  # any clone has it; the default is a revision of main's history
        "--phones", "2",
        timeout=300,
    )  # fmt: skip
    stdout = "\n".join(lines)
    kinds = ("28x28 PNG", "400x400 JPEG", "1600x1200 photo", "4032x3024 photo", "PNG canvas")
    for kind in kinds:
        assert any(x.startswith(f"| {kind}") for x in lines), stdout
    for quality, orientation in ((80, 1), (95, 6)):  # the phones span the set's qualities
        assert any(x.startswith(f"| {quality} | {orientation} | ") for x in lines), stdout
    floor = next(x for x in lines if x.startswith("phone photos: the draft alone costs"))
    assert floor.endswith("of 2 have a draft within 0.15"), stdout
    assert sum(x.startswith("target ") for x in lines) == 3, stdout
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), stdout
