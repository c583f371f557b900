"""`bench/soak.py` and `bench/slow_clients.py` end to end, briefly (seconds, small limits)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench.runner import run_bench


@pytest.mark.slow
def test_soak_runs_and_reports_failures_and_rss(mnist_dir: Path) -> None:
    lines = run_bench(
        "soak.py", "--seconds", "3", "--clients", "4", "--publish-every", "1", "--idle", "0.5",
        "--mnist-dir", str(mnist_dir), timeout=240,
    )  # fmt: skip
    stdout = "\n".join(lines)
    last = r"failed: 0 of [\d,]+ requests; RSS before [\d.]+ MB, after [\d.]+ MB, peak [\d.]+ MB"
    assert re.fullmatch(last, lines[-1]), stdout
    for kind in ("28x28 PNG | 200", "not an image | 422", "step not trained | 503"):
        assert any(x.startswith(f"| {kind} |") for x in lines), stdout
    assert re.search(r"\((\d+) published\)", stdout) and "(0 published)" not in stdout


@pytest.mark.slow
def test_slow_clients_bench_reports_the_cut_offs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADER_TIMEOUT", "1")  # the service's; uvicorn alone has none
    monkeypatch.setenv("BODY_TIMEOUT", "2")
    lines = run_bench("slow_clients.py", "--seconds", "3", "--clients", "10", timeout=240)
    stdout = "\n".join(lines)
    assert re.fullmatch(
        # The client starts its clock once connected, which a loaded machine may schedule
        # after the server has accepted and armed its timer: a cut-off can read a little early.
        r"cut-off: trickled body (1\.9|2\.\d) s, silent (0\.9|1\.\d) s, "
        r"trickled headers (0\.9|1\.\d) s; uvicorn alone: "
        r"trickled body 10 of 10 still open, silent 2 of 2 still open, trickled headers 2 of 2 "
        r"still open",
        lines[-1],
    ), stdout
