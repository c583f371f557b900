"""`bench/train_load.py` end to end on a tiny subset: every policy timed quiet, with a core busy
from the start and with one busy from half a second in, the --jobs comparison, and the ratio as
the last line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench.runner import run_bench
from trainer.threads import cpu_cores


@pytest.mark.slow
def test_train_load_bench_runs_and_reports_a_ratio(mnist_dir: Path) -> None:
    lines = run_bench(
        "train_load.py", "--rounds", "1", "--limit", "64", "--heavy-limit", "16",
        "--jobs-limit", "64", "--jobs-steps", "tiny,gap",
        "--data-dir", str(mnist_dir),
        timeout=600,
    )  # fmt: skip
    stdout = "\n".join(lines)
    assert re.match(
        r"\d+ cores; chosen for one job: \d+ thread\(s\) up to \d+, GOMP_SPINCOUNT=1000", lines[0]
    )
    for step, images in (("scheduler", 64), ("skeleton", 16)):
        for policy in ("chosen", "1 thread", "old default"):
            row = rf"\| `{step}` \| {images} \| {policy} \|( [\d.]+ \|){{5}}"
            assert any(re.fullmatch(row, x) for x in lines), stdout
        assert any(x.startswith(f"`{step}`: chosen busy/quiet at worst ") for x in lines), stdout
    jobs = min(cpu_cores(), 2)  # a job per core, at most one per step
    for one in ("--jobs 1 --threads 1", "--jobs 1"):
        row = rf"- {one}: [\d.]+ s; the default \({jobs} jobs x \d+ threads?\) [\d.]+ s: [\d.]+x"
        assert any(re.match(row, x) for x in lines), stdout
    assert lines[-2].startswith("load average "), stdout
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), stdout
