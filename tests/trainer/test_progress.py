"""The progress a trainer leaves on the volume: written when an epoch starts, from the batch loop
at least every heartbeat, when it ends and when the step ends; replaced atomically (a reader
never sees half a file); recognisably stale once a real trainer is killed with SIGKILL. And the
run's own line: its estimate of the time left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.volume_fixtures import fake_metrics
from trainer import threads
from trainer.progress import EpochEstimate, Overall, Planned, StepReporter, finish_time, step_eta
from volume.progress import (
    HEARTBEAT_SECONDS,
    StepProgress,
    is_stale,
    now_iso,
    progress_path,
    read_progress,
    write_progress,
)

EPOCH = fake_metrics("tiny").epochs[0]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_reporter_writes_at_the_epochs_the_heartbeat_and_the_end(tmp_path: Path) -> None:
    clock = Clock()
    reporter = StepReporter(tmp_path, "tiny", 2, now_iso(), 0.0, EpochEstimate(9.0, 1.0), clock)

    def on_disk() -> StepProgress:
        return read_progress(tmp_path)["tiny"]

    reporter.epoch_started(1, [])
    assert (on_disk().epoch, on_disk().fraction, on_disk().eta_seconds) == (1, 0.0, 20.0)
    clock.now = HEARTBEAT_SECONDS / 2 - 0.1
    reporter.batch(3, 10)  # within half a heartbeat of the last write: nothing written
    assert on_disk().fraction == 0.0
    clock.now = HEARTBEAT_SECONDS / 2
    reporter.batch(4, 10)
    seen = on_disk()
    assert (seen.fraction, seen.elapsed_seconds) == (0.4, HEARTBEAT_SECONDS / 2)
    # 40 % of the epoch in 5 s: 12.5 s of training and the estimated 1 s of testing an epoch.
    assert seen.eta_seconds == pytest.approx(13.5 - 5 + 13.5, abs=0.1)
    first = EPOCH.model_copy(update={"epoch": 1, "seconds": 12.0})
    clock.now = 12.0
    reporter.epoch_ended([first])
    assert (on_disk().epoch, on_disk().fraction, len(on_disk().history)) == (1, 1.0, 1)
    reporter.epoch_started(2, [first])
    assert on_disk().eta_seconds == 12.0  # an epoch lasts what the last one did
    reporter.finish("published", version="v1")
    assert (on_disk().state, on_disk().version, on_disk().eta_seconds) == ("published", "v1", 0.0)
    assert not is_stale(on_disk())


@pytest.mark.parametrize(
    ("epochs", "epoch", "fraction", "in_epoch", "last", "estimate", "expected"),
    [
        (3, 1, 0.0, 0.0, None, EpochEstimate(10.0, 2.0), 36.0),  # from the first batches
        (3, 1, 0.01, 1.0, None, EpochEstimate(10.0, 2.0), 35.0),  # too early to extrapolate
        (3, 1, 0.5, 4.0, None, EpochEstimate(10.0, 2.0), 6.0 + 20.0),  # 8 s + 2 s of test
        (3, 1, 0.5, 4.0, None, None, 4.0 + 16.0),
        (3, 1, 0.0, 0.0, None, None, None),  # nothing to go by
        (3, 3, 0.5, 5.0, 10.0, None, 5.0),  # the last epoch: its rest
        (3, 2, 0.0, 15.0, 10.0, None, 10.0),  # slower than the last one: not below zero
    ],
)
def test_a_steps_time_left(
    epochs: int,
    epoch: int,
    fraction: float,
    in_epoch: float,
    last: float | None,
    estimate: EpochEstimate | None,
    expected: float | None,
) -> None:
    history = [EPOCH.model_copy(update={"seconds": last})] if last is not None else []
    eta = step_eta(epochs, epoch, fraction, in_epoch, history, estimate)
    assert eta == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("running", "queued", "jobs", "expected"),
    [
        ([], [10.0, 10.0, 10.0], 1, 30.0),
        ([], [10.0, 10.0, 10.0], 2, 20.0),
        ([5.0], [10.0, 3.0], 2, 10.0),  # the free job takes 10, the running one then 3
        ([5.0, 1.0], [], 2, 5.0),
        ([], [], 2, 0.0),
    ],
)
def test_the_runs_time_left(
    running: list[float], queued: list[float], jobs: int, expected: float
) -> None:
    assert finish_time(running, queued, jobs) == expected


def test_the_overall_line_counts_this_runs_files(tmp_path: Path) -> None:
    plan = [Planned("tiny", 2, 0, 10.0), Planned("gap", 2, 0, 20.0)]
    overall = Overall(tmp_path, plan, jobs=1)
    old = StepProgress(
        step="gap", host="h", pid=1, started_at=now_iso(), epochs=2, epoch=2, fraction=1.0,
        elapsed_seconds=1.0, state="published",
        updated_at=(datetime.now(UTC) - timedelta(days=1)).isoformat(),
    )  # fmt: skip
    write_progress(tmp_path, old)  # an earlier run's: not this run's progress
    reporter = StepReporter(tmp_path, "tiny", 2, now_iso(), time.perf_counter())
    reporter.epoch_started(2, [EPOCH.model_copy(update={"seconds": 10.0})])
    line = overall.line()
    assert line.startswith("progress: 0/2 steps published; 1/4 epochs; 0s elapsed; about "), line
    assert "tiny epoch 2/2 0%" in line
    # tiny has about 10 s left, gap's 40 s follow it on the one job.
    assert "about 50s left" in line or "about 49s left" in line, line


def test_a_reader_never_sees_half_a_file(tmp_path: Path) -> None:
    # A long history makes each file big enough that a torn write would show.
    history = [EPOCH.model_copy(update={"epoch": n}) for n in range(1, 400)]
    base = StepProgress(
        step="tiny", host="h", pid=1, started_at=now_iso(), updated_at=now_iso(), epochs=400,
        epoch=1, fraction=0.0, elapsed_seconds=0.0, history=history,
    )  # fmt: skip
    write_progress(tmp_path, base)
    path = progress_path(tmp_path, "tiny")
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            write_progress(tmp_path, base.model_copy(update={"fraction": (n % 100) / 100}))

    thread = threading.Thread(target=writer)
    thread.start()
    reads, fractions = 0, set()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            text = path.read_bytes()  # raw bytes: any torn file fails to parse here
            fractions.add(StepProgress.model_validate_json(text).fraction)
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads > 50
    assert len(fractions) > 1  # the reader really read while the writer replaced the file
    assert not list(path.parent.glob("*.tmp*")), "a temporary file was left behind"


@pytest.mark.slow
def test_a_killed_trainer_leaves_a_stale_file(mnist_dir: Path, tmp_path: Path) -> None:
    """A real trainer, killed with SIGKILL while it trains: its file still says `training`, and
    is_stale() knows its writer is gone; before the kill the same file was not stale."""
    chosen_by_user = (*threads.WAIT_VARIABLES, *threads.THREAD_VARIABLES)
    env = {k: v for k, v in os.environ.items() if k not in chosen_by_user}
    trainer = subprocess.Popen(
        [sys.executable, "-m", "trainer", "run", "--steps", "scheduler", "--epochs", "50",
         "--limit", "2000", "--jobs", "1", "--quiet", "--out", str(tmp_path),
         "--data-dir", str(mnist_dir)],
        cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    path = progress_path(tmp_path, "scheduler")
    try:
        deadline = time.monotonic() + 240
        while not path.exists() and time.monotonic() < deadline and trainer.poll() is None:
            time.sleep(0.2)
        assert path.exists(), "no progress file"
        alive = read_progress(tmp_path)["scheduler"]
        assert alive.state == "training" and not is_stale(alive)
        assert alive.pid == trainer.pid
    finally:
        trainer.send_signal(signal.SIGKILL)
        _, stderr = trainer.communicate(timeout=30)
    assert trainer.returncode == -signal.SIGKILL
    dead = read_progress(tmp_path)["scheduler"]
    assert dead.state == "training"
    assert is_stale(dead)  # its process is gone
    # On another host only its age tells: stale once silent for several heartbeats.
    elsewhere = dead.model_copy(update={"host": "another-host"})
    assert not is_stale(elsewhere, datetime.fromisoformat(dead.updated_at))
    later = datetime.fromisoformat(dead.updated_at) + timedelta(seconds=10 * HEARTBEAT_SECONDS)
    assert is_stale(elsewhere, later)
    json.loads(path.read_text())  # whole, as written
    # The run's first line said what it chose and why: one job, a thread a free core, the wait
    # (another program may hold a core when it starts: then it says so and takes one less).
    first = stderr.splitlines()[0]
    n, s = threads.cpu_cores(), "s" * (threads.cpu_cores() != 1)
    said = re.fullmatch(
        rf"threads: 1 job x (\d+) threads? \(--jobs 1; {n} core{s} shared by 1 job"
        r"(?:, (\d+) of them busy with other programs)?\); "
        r"GOMP_SPINCOUNT=1000: a waiting thread sleeps after a few microseconds",
        first,
    )
    assert said, stderr
    assert int(said[1]) == n - int(said[2] or 0), first


def test_the_steps_to_come_are_counted_at_the_runs_pace(tmp_path: Path) -> None:
    """An epoch that took twice the plan's estimate (a busy core) doubles the queued steps'."""
    plan = [Planned("tiny", 2, 0, 10.0), Planned("gap", 2, 0, 20.0)]
    overall = Overall(tmp_path, plan, jobs=1)
    reporter = StepReporter(tmp_path, "tiny", 2, now_iso(), time.perf_counter())
    reporter.epoch_started(2, [EPOCH.model_copy(update={"seconds": 20.0})])
    assert overall.pace(overall.mine()) == 2.0
    line = overall.line()
    # tiny's second epoch lasts what its first did (20 s); gap's 40 s at twice: 80 s.
    assert "about 1m40s left" in line or "about 1m39s left" in line, line
