"""`bench/serve.py` end to end, briefly: both servers, the load generator, the report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.service.conftest import publish

pytestmark = pytest.mark.slow


def test_serve_bench_runs_and_reports_a_ratio(tmp_path: Path, mnist_dir: Path) -> None:
    models = tmp_path / "models"
    publish(models, "scheduler")  # a tiny fixture model: the benchmark times the service
    command = [sys.executable, "bench/serve.py", "--models-dir", str(models)]
    command += ["--mnist-dir", str(mnist_dir), "--concurrency", "1,8"]
    command += ["--duration", "0.5", "--warmup", "0.2", "--repeats", "1"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), done.stdout
    assert any(re.match(r"target holds: no errors \(0 in [\d,]+ requests\)", x) for x in lines)
    for upload in ("28x28 PNG", "400x400 JPEG"):
        for clients in (1, 8):
            assert any(x.startswith(f"| {upload} | {clients} |") for x in lines), done.stdout
