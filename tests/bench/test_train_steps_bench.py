"""`bench/train_steps.py`: its arithmetic on made-up epochs, and a short real run end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import train_steps as bench
from tests.bench.runner import run_bench
from tests.service.conftest import publish
from tests.volume_fixtures import fake_metrics
from volume import Metrics


def with_epochs(seconds_and_accuracy: list[tuple[float, float]]) -> Metrics:
    epoch = fake_metrics("scheduler").epochs[0]
    epochs = [
        epoch.model_copy(update={"epoch": n, "seconds": s, "test_accuracy": a})
        for n, (s, a) in enumerate(seconds_and_accuracy, start=1)
    ]
    return fake_metrics("scheduler").model_copy(update={"epochs": epochs})


@pytest.mark.parametrize(
    ("epochs", "target", "reached", "steady"),
    [
        ([(9.0, 99.0), (2.0, 99.3), (3.0, 99.41), (2.5, 99.5)], 99.4, (3, 14.0), 2.5),
        ([(9.0, 99.0), (2.0, 99.4)], 99.4, (2, 11.0), 2.0),  # reaching it exactly counts
        ([(9.0, 99.0), (2.0, 99.3), (4.0, 99.39)], 99.4, None, 3.0),
        ([(5.0, 99.5)], 99.4, (1, 5.0), 5.0),  # one epoch: it is its own steady state
    ],
)
def test_time_to_target_and_steady_seconds(
    epochs: list[tuple[float, float]],
    target: float,
    reached: tuple[int, float] | None,
    steady: float,
) -> None:
    metrics = with_epochs(epochs)
    assert bench.time_to(metrics, target) == reached
    assert bench.steady_seconds(metrics) == steady


@pytest.mark.slow
def test_train_steps_bench_runs_and_reports_a_ratio(mnist_dir: Path, tmp_path: Path) -> None:
    # The kept folder already holds a step from an earlier run: it must not enter the table.
    publish(tmp_path / "device", "setup")
    lines = run_bench(
        "train_steps.py", "--steps", "gap", "--device", "cpu", "--epochs", "2", "--limit", "300",
        "--target", "0", "--data-dir", str(mnist_dir), "--keep", str(tmp_path), timeout=300,
    )  # fmt: skip
    stdout = "\n".join(lines)
    assert lines[0] == "device: cpu; 300 training images per epoch", stdout
    # The final step is timed even when --steps leaves it out: the baseline is its epoch.
    for number, step, params in ((6, "gap", "9,490"), (7, "scheduler", "7,862")):
        row = (
            rf"\| {number} \| `{step}` \| {params} \| 2 \| [\d.]+ \| [\d.]+ \| [\d,]+ \| [\d.]+ \|"
        )
        assert any(re.fullmatch(row, x) for x in lines), stdout
    assert any(
        re.fullmatch(r"`scheduler` reached 0.0 % test accuracy at epoch 1: [\d.]+ s", x)
        for x in lines
    ), stdout
    assert re.fullmatch(r"baseline: one epoch of `scheduler` on cpu: [\d.]+ s", lines[-2])
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), stdout
    assert not any("`setup`" in x for x in lines), stdout
    # --keep: the volumes it measured stay, each a real published volume.
    trained = bench.published_metrics(tmp_path / "device", ["gap", "scheduler"])
    assert [m.provenance.limit for m in trained.values()] == [300, 300]
    assert bench.published_metrics(tmp_path / "cpu", ["scheduler"])["scheduler"].epochs[0].seconds
