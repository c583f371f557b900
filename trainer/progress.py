"""Progress while training: each step's file on the volume, and the whole run's line.

``StepReporter`` is what ``fit()`` tells as it goes (its ``Watch``): it rewrites the step's
``progress/<step>.json`` (volume/progress.py) when an epoch starts, from the batch loop at
least every ``HEARTBEAT_SECONDS`` (a clock read per batch, nothing read from the device), when
an epoch ends, and once more when the step is published, fails or is stopped.

``Overall`` prints the run's line at least every ``OVERALL_SECONDS``, on a terminal or into a
log alike: steps published, epochs done, time so far and an estimate of the time left. It reads
the progress files back from the volume, so it is the same whether the steps train in this
process or in ``--jobs`` processes beside it; a step not started yet counts at its estimate
from the first batches (trainer/plan.py).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from volume import EpochMetrics
from volume.progress import (
    HEARTBEAT_SECONDS,
    ProgressState,
    StepProgress,
    now_iso,
    read_progress,
    write_progress,
)

OVERALL_SECONDS = 30.0  # the run's line comes at least this often
# A step's epoch is extrapolated from the batches done once this much of it is; before that
# the estimate from the first batches stands.
EXTRAPOLATE_AFTER = 0.05


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: to the second under an hour, to the minute above."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class EpochEstimate:
    """An epoch's seconds, from the first batches: training plus the test pass after it."""

    train_seconds: float
    test_seconds: float

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.test_seconds


def step_eta(
    epochs: int,
    epoch: int,
    fraction: float,
    in_epoch: float,
    history: Sequence[EpochMetrics],
    estimate: EpochEstimate | None,
) -> float | None:
    """Seconds left for a step in its `epoch` (1-based) of `epochs`, `fraction` of its training
    batches done in `in_epoch` seconds. An epoch lasts what the last finished one did; in the
    first, the batches so far extrapolated (plus the estimated test pass) once they are
    EXTRAPOLATE_AFTER of it, else the estimate from the first batches; None without either."""
    if history:
        per_epoch: float | None = history[-1].seconds
    elif fraction >= EXTRAPOLATE_AFTER:
        per_epoch = in_epoch / fraction + (estimate.test_seconds if estimate else 0.0)
    else:
        per_epoch = estimate.seconds if estimate else None
    if per_epoch is None:
        return None
    return max(per_epoch - in_epoch, 0.0) + per_epoch * (epochs - epoch)


class StepReporter:
    """One step's progress file, kept up to date: ``fit(watch=...)`` calls the first three
    methods, the trainer ``finish()`` once the step is published, failed or stopped."""

    def __init__(
        self,
        root: Path,
        step: str,
        epochs: int,
        started_at: str,
        since: float,
        estimate: EpochEstimate | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.root, self.estimate, self.since, self.clock = root, estimate, since, clock
        self.epoch_start = self.last_write = clock()
        self.progress = StepProgress(
            step=step,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=started_at,
            updated_at=now_iso(),
            epochs=epochs,
            epoch=1,
            fraction=0.0,
            elapsed_seconds=0.0,
        )

    def _write(self, **changes: object) -> None:
        now = self.clock()
        p = self.progress.model_copy(update=changes)
        eta = step_eta(
            p.epochs, p.epoch, p.fraction, now - self.epoch_start, p.history, self.estimate
        )
        eta = 0.0 if p.state != "training" else eta
        self.progress = p.model_copy(
            update={
                "updated_at": now_iso(),
                "elapsed_seconds": round(now - self.since, 2),
                "eta_seconds": None if eta is None else round(eta, 1),
            }
        )
        write_progress(self.root, self.progress)
        self.last_write = now

    def epoch_started(self, epoch: int, history: list[EpochMetrics]) -> None:
        self.epoch_start = self.clock()
        self._write(epoch=epoch, fraction=0.0, history=list(history))

    def batch(self, done: int, total: int) -> None:
        # Half the heartbeat: a batch may take seconds, and the file must not look stale.
        if self.clock() - self.last_write >= HEARTBEAT_SECONDS / 2:
            self._write(fraction=round(done / total, 4))

    def epoch_ended(self, history: list[EpochMetrics]) -> None:
        self._write(epoch=len(history), fraction=1.0, history=list(history))

    def finish(
        self, state: ProgressState, version: str | None = None, message: str | None = None
    ) -> None:
        self._write(state=state, version=version, message=message)


class Watches:
    """Several of ``fit()``'s watches heard as one: a step's progress file and the thread
    governor (``trainer.threads.Governor``); None is left out."""

    def __init__(self, *watches: Any) -> None:
        self.watches = [w for w in watches if w is not None]

    def epoch_started(self, epoch: int, history: list[EpochMetrics]) -> None:
        for w in self.watches:
            w.epoch_started(epoch, history)

    def batch(self, done: int, total: int) -> None:
        for w in self.watches:
            w.batch(done, total)

    def epoch_ended(self, history: list[EpochMetrics]) -> None:
        for w in self.watches:
            w.epoch_ended(history)


@dataclass(frozen=True)
class Planned:
    """A step of the run: its epochs (all the recipe's; `done` of them before this run) and
    the estimated seconds of one epoch (None: not estimated)."""

    step: str
    epochs: int
    done: int = 0
    epoch_seconds: float | None = None

    @property
    def seconds_left(self) -> float:
        return (self.epoch_seconds or 0.0) * (self.epochs - self.done)


def finish_time(running: Sequence[float], queued: Sequence[float], jobs: int) -> float:
    """Seconds until the last step ends: the running steps' seconds left, then each queued
    step, in order, taken by the first job to come free."""
    free = [*running, *[0.0] * (jobs - len(running))]
    for seconds in queued:
        free.sort()
        free[0] += seconds
    return max(free, default=0.0)


class Overall:
    """The run's progress line, from the volume's progress files and the plan.

    Besides its epochs a step takes time to build its model, to save its state after
    each epoch, to test the raw weights of an averaged recipe and to export: its overhead,
    learnt from the steps this run has published (wall time from its start to its publishing,
    less its epochs) and counted for each step still to come; 0 until one is published."""

    def __init__(
        self,
        root: Path,
        plan: Sequence[Planned],
        jobs: int,
        out: TextIO = sys.stderr,
        step_started: dict[str, datetime] | None = None,
    ) -> None:
        self.root, self.plan, self.jobs, self.out = root, list(plan), jobs, out
        now = datetime.now(UTC)  # to the millisecond, as the files' times are (now_iso)
        self.started_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        # When each step started; a --jobs run's parent fills it as its workers say.
        self.step_started: dict[str, datetime] = {} if step_started is None else step_started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def started(self, step: str) -> None:
        """Tell it that `step` starts now (its process, or its turn in this one)."""
        self.step_started[step] = datetime.now(UTC)

    def mine(self) -> dict[str, StepProgress]:
        """This run's progress files (one left by an earlier run is not counted)."""
        found = read_progress(self.root)
        wanted = {p.step for p in self.plan}
        return {
            step: p
            for step, p in found.items()
            if step in wanted and datetime.fromisoformat(p.updated_at) >= self.started_at
        }

    def overhead(self, files: dict[str, StepProgress]) -> float:
        """The mean seconds a published step of this run took beyond its epochs."""
        seen = []
        for p in self.plan:
            f, start = files.get(p.step), self.step_started.get(p.step)
            if f is not None and f.state == "published" and start is not None:
                wall = (datetime.fromisoformat(f.updated_at) - start).total_seconds()
                seen.append(max(wall - sum(e.seconds for e in f.history[p.done :]), 0.0))
        return sum(seen) / len(seen) if seen else 0.0

    def pace(self, files: dict[str, StepProgress]) -> float:
        """This run's epochs' seconds over what the plan estimated for them: above 1 when the
        steps run slower than their first batches did, as beside a program that started later
        (1.6 in a `make demo` with a core kept busy, when a --jobs run still timed its first
        batches one step alone). The steps still to come are counted at this pace; 1 until an
        epoch has ended."""
        planned = taken = 0.0
        for p in self.plan:
            f = files.get(p.step)
            if f is None or p.epoch_seconds is None:
                continue
            ran = f.history[p.done :]
            planned += p.epoch_seconds * len(ran)
            taken += sum(e.seconds for e in ran)
        return taken / planned if planned > 0 else 1.0

    def line(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        files = self.mine()
        extra = self.overhead(files)
        pace = self.pace(files)
        published = [s for s, f in files.items() if f.state == "published"]
        ended = [f"{s} ({f.state})" for s, f in files.items() if f.state in ("failed", "stopped")]
        epochs = sum(p.epochs for p in self.plan)
        done = sum(len(files[p.step].history) if p.step in files else p.done for p in self.plan)
        running, queued, doing = [], [], []
        for p in self.plan:
            f = files.get(p.step)
            if f is None:
                queued.append(p.seconds_left * pace + extra)
            elif f.state == "training" and f.epoch == f.epochs and f.fraction == 1.0:
                since = (now - datetime.fromisoformat(f.updated_at)).total_seconds()
                running.append(max(extra - since, 0.0))
                doing.append(f"{p.step} exporting")
            elif f.state == "training":
                eta = f.eta_seconds if f.eta_seconds is not None else p.seconds_left * pace
                running.append(eta + extra)
                doing.append(f"{p.step} epoch {f.epoch}/{f.epochs} {f.fraction:.0%}")
        left = finish_time(running, queued, self.jobs)
        parts = [
            f"{len(published)}/{len(self.plan)} steps published",
            f"{done}/{epochs} epochs",
            f"{duration((now - self.started_at).total_seconds())} elapsed",
            f"about {duration(left)} left",
        ]
        if doing:
            parts.append(", ".join(doing))
        if ended:
            parts.append(f"ended without publishing: {', '.join(ended)}")
        return "progress: " + "; ".join(parts)

    def done_line(self, estimate: float) -> str:
        """The run's last line: what it published, in how long, against the estimate."""
        files = self.mine()
        published = sum(f.state == "published" for f in files.values())
        took = (datetime.now(UTC) - self.started_at).total_seconds()
        return (
            f"done: {published}/{len(self.plan)} steps published in {duration(took)} "
            f"(estimated from the first batches: {duration(estimate)} of epochs)"
        )

    def print(self) -> None:
        tqdm.write(self.line(), file=self.out)  # above a progress bar, if one is drawn
        self.out.flush()

    def start(self, every: float = OVERALL_SECONDS) -> Overall:
        """Print the line every `every` seconds from a thread, until ``stop()``."""

        def loop() -> None:
            while not self._stop.wait(every):
                self.print()

        self._thread = threading.Thread(target=loop, name="overall-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
