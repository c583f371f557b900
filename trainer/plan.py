"""The run's plan before it trains: which steps, how many epochs each is still to train, and
how long an epoch of each takes, timed from its first batches.

``time_first_batches()`` trains a throw-away copy of a step's model for a few batches on the
threads and device the run will use, after one batch to warm up, then tests it on a few
hundred images, and scales both to an epoch. It leaves the run's numbers alone: every step
seeds torch's generators again before it builds its model.

In a ``--jobs`` run the workers time the steps between them (``share_estimates()``), each step
once, side by side as they will train, and the parent reads the estimates from the claims
folder (``read_estimates()``): the plan costs a share of the timing instead of all of it
before any worker starts (2.8 of 5.6 s for the eight steps on 2 cores).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from trainer.data import Split
from trainer.jobs import claim
from trainer.loop import evaluate, make_ema, make_optimizer, train_one_epoch
from trainer.progress import EpochEstimate, Planned, duration
from trainer.steps import Recipe, get_step

PROBE_SECONDS = 0.5  # time training batches until this much has passed...
PROBE_BATCHES = (2, 20)  # ...but at least the first, at most the second of these
PROBE_TEST_IMAGES = 200
ESTIMATES = "estimates"  # the folder of a --jobs run's estimates, in its claims folder
STOPPED_PROBE_SECONDS = 60.0  # a step claimed for timing but not timed by then: time it here


def time_first_batches(
    step: str, recipe: Recipe, train: Split, test: Split, log: bool
) -> EpochEstimate:
    """An epoch of `step` under `recipe` on `train` and `test`, estimated from a few batches
    (`log`: the epoch's line, which tests a weight-averaged recipe's raw weights too)."""
    model = get_step(step).build().to(train.labels.device)
    optimizer = make_optimizer(model, recipe)
    ema = make_ema(model, recipe)
    one = train.head(recipe.batch_size)

    def one_batch() -> None:  # a whole batch, ending with a read of its loss (a GPU sync)
        train_one_epoch(model, one, optimizer, None, recipe, progress=False, ema=ema)

    one_batch()  # the first batch pays for allocations and kernel choices
    times: list[float] = []
    start = time.perf_counter()
    low, high = PROBE_BATCHES
    while len(times) < low or (time.perf_counter() - start < PROBE_SECONDS and len(times) < high):
        t = time.perf_counter()
        one_batch()
        times.append(time.perf_counter() - t)
    per_batch = sorted(times)[len(times) // 2]
    n_test = min(len(test), PROBE_TEST_IMAGES)
    t = time.perf_counter()
    evaluate(model, test.head(n_test), batch_size=n_test)
    passes = 2 if ema is not None and log else 1  # fit() logs the raw weights' accuracy too
    test_seconds = (time.perf_counter() - t) * passes * len(test) / max(n_test, 1)
    batches = -(-len(train) // recipe.batch_size)
    return EpochEstimate(per_batch * batches, test_seconds)


def longest_first(plan: list[Planned]) -> list[Planned]:
    """The order in which the jobs of a --jobs run take the steps: the longest first, so that
    the jobs end together, or nearly."""
    return sorted(plan, key=lambda p: p.seconds_left, reverse=True)


def _estimate_file(claims: Path, step: str) -> Path:
    return claims / ESTIMATES / f"{step}.json"


def read_estimates(claims: Path, steps: Iterable[str]) -> dict[str, EpochEstimate]:
    """The estimates the workers of a --jobs run have written so far, of `steps`."""
    found = {}
    for step in steps:
        try:
            found[step] = EpochEstimate(**json.loads(_estimate_file(claims, step).read_text()))
        except (OSError, ValueError, TypeError):
            continue  # not written yet (a file is whole when it has its name)
    return found


def share_estimates(
    steps: list[str],
    claims: Path,
    probe: Callable[[str], EpochEstimate],
    poll: float = 0.05,
    stopped_after: float = STOPPED_PROBE_SECONDS,
) -> dict[str, EpochEstimate]:
    """A --jobs worker's part of the plan: `probe` each step no other worker has claimed to
    time, write its estimate for the others and the parent, then wait for all of `steps`
    (timing itself any step whose timer stopped before it wrote)."""
    folder = claims / ESTIMATES
    folder.mkdir(exist_ok=True)
    for step in steps:
        if claim(folder, f"{step}.claim"):
            _write_estimate(claims, step, probe(step))
    deadline = time.monotonic() + stopped_after
    while len(found := read_estimates(claims, steps)) < len(steps):
        if time.monotonic() > deadline:
            for step in steps:
                if step not in found:
                    _write_estimate(claims, step, probe(step))
            continue
        time.sleep(poll)
    return found


def _write_estimate(claims: Path, step: str, estimate: EpochEstimate) -> None:
    path = _estimate_file(claims, step)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(asdict(estimate)))
    os.replace(partial, path)  # atomic: a reader sees no file or the whole of it


def plan_lines(
    plan: list[Planned], skipped: list[str], jobs: int, total: float | None
) -> list[str]:
    """The plan as the run prints it before training."""
    lines = []
    for p in plan:
        left = p.epochs - p.done
        after = f" (resumed after epoch {p.done})" if p.done else ""
        each = f"~{duration(p.epoch_seconds)} an epoch" if p.epoch_seconds is not None else ""
        lines.append(f"  {p.step:<10} {left:>2} epoch{'s' * (left != 1)}{after}  {each}")
    if skipped:
        lines.append(f"  skipped (published from this recipe, code and data): {', '.join(skipped)}")
    if total is not None:
        side = f", {jobs} steps at a time" if jobs > 1 else ""
        lines.append(
            f"estimate from the first batches: about {duration(total)} of epochs{side}; starting "
            "and exporting each step come on top (the progress line counts them once one is "
            "published)"
        )
    return lines
