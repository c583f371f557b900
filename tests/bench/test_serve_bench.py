"""`bench/serve.py` end to end, briefly: both servers, the load generator, the report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench.runner import run_bench
from tests.service.conftest import publish

pytestmark = pytest.mark.slow


def test_serve_bench_runs_and_reports_a_ratio(tmp_path: Path, mnist_dir: Path) -> None:
    models = tmp_path / "models"
    publish(models, "scheduler")  # a tiny fixture model: the benchmark times the service
    lines = run_bench(
        "serve.py", "--models-dir", str(models), "--mnist-dir", str(mnist_dir),
        "--concurrency", "1,8", "--duration", "0.5", "--warmup", "0.2", "--repeats", "1",
        timeout=120,
    )  # fmt: skip
    stdout = "\n".join(lines)
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), stdout
    assert any(re.match(r"target holds: no errors \(0 in [\d,]+ requests\)", x) for x in lines)
    for upload in ("28x28 PNG", "400x400 JPEG"):
        for clients in (1, 8):
            assert any(x.startswith(f"| {upload} | {clients} |") for x in lines), stdout
