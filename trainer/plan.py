"""The run's plan before it trains: which steps, how many epochs each is still to train, and
how long an epoch of each takes, timed from its first batches.

``time_first_batches()`` trains a throw-away copy of a step's model for a few batches on the
threads and device the run will use, after one batch to warm up, then tests it on a few
hundred images, and scales both to an epoch. It leaves the run's numbers alone: every step
seeds torch's generators again before it builds its model.
"""

from __future__ import annotations

import time

from trainer.data import Split
from trainer.loop import evaluate, make_ema, make_optimizer, train_one_epoch
from trainer.progress import EpochEstimate, Planned, duration
from trainer.steps import Recipe, get_step

PROBE_SECONDS = 0.5  # time training batches until this much has passed...
PROBE_BATCHES = (2, 20)  # ...but at least the first, at most the second of these
PROBE_TEST_IMAGES = 200


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
