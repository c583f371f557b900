"""bench/inside.py runs as its docstring says, on the browser tests' volume, and ends with its
ratio (its timings are for the benchmark's own runs, not checked here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.runner import run_bench
from volume import STEP_SLUGS, read_index

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_the_inside_benchmark_prints_a_row_per_step_and_its_ratio(
    lab_volume: Path, mnist_dir: Path
) -> None:
    lines = run_bench(
        "inside.py", "--models-dir", str(lab_volume), "--mnist-dir", str(mnist_dir),
        "--requests", "2", timeout=600,
    )  # fmt: skip
    rows = [line for line in lines if line.startswith("| `")]
    trained = [line.split("`")[1] for line in rows]
    assert trained == [s for s in STEP_SLUGS if s in read_index(lab_volume).steps]
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        assert float(cells[4]) > 0 and int(cells[5].replace(",", "")) > 1000, row
    assert lines[-2].startswith("target: the largest step's /inside p50 under 60 ms")
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[-1]) > 0
