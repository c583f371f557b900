"""`bench/peers.py`: the CPU accounting on a made-up process table, and a short real run
against the tutorial app and LitServe (each in the venv the benchmark makes for it, from PyPI;
BentoML and TorchServe are left to the benchmark itself: TorchServe's venv brings torch)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bench import peers
from tests.bench.runner import run_bench
from tests.service.conftest import publish


def test_a_servers_family_is_every_process_descended_from_it() -> None:
    table = {1: (0, 9.0), 10: (1, 1.0), 11: (10, 2.0), 12: (11, 0.5), 20: (1, 7.0)}
    assert peers.family(10, table) == {10, 11, 12}  # a worker that started its own session too
    assert peers.family(12, table) == {12}
    assert peers.family(99, table) == set()  # gone


def test_the_process_table_counts_this_process() -> None:
    table = peers.process_table()
    parent, seconds = table[os.getpid()]
    assert parent == os.getppid() and seconds > 0


@pytest.mark.slow
def test_peers_bench_runs_and_reports_a_ratio(tmp_path: Path, mnist_dir: Path) -> None:
    models = tmp_path / "models"
    publish(models, "scheduler")  # a tiny fixture model: the benchmark times the servers
    lines = run_bench(
        "peers.py", "--models-dir", str(models), "--mnist-dir", str(mnist_dir),
        "--peers", "tutorial,litserve", "--concurrency", "1,8", "--duration", "0.5",
        "--warmup", "0.2", "--repeats", "1", "--check-photos", "9", "--check-phones", "1",
        timeout=1200,  # the first time, pip makes both venvs
    )  # fmt: skip
    stdout = "\n".join(lines)
    # Same answers first: the framework peer must match ours on every upload checked.
    assert any(
        re.fullmatch(r"\| litserve \| 12/12 \| 12/12 \| \d+/12 \| \d+/\d+ \|", x) for x in lines
    ), stdout
    assert any(x.startswith("the tutorial app is wrong on ") for x in lines), stdout
    for upload in ("28x28 PNG", "400x400 JPEG"):
        for clients in (1, 8):
            for app in ("ours", "tutorial", "litserve"):
                assert any(x.startswith(f"| {upload} | {clients} | {app} |") for x in lines), stdout
    assert any(re.match(r"target holds: no errors \(0 in [\d,]+ requests\)", x) for x in lines)
    assert sum(x.startswith("target ") for x in lines) == 4, stdout
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), stdout
