"""The step report: computed from run metrics alone, reproducible byte for byte."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.volume_fixtures import fake_metrics, fake_summary
from trainer import report
from volume import EpochMetrics, publish


def epochs(tests: list[float], trains: list[float]) -> list[EpochMetrics]:
    return [
        EpochMetrics(
            epoch=i + 1,
            train_loss=1.0 / (i + 1),
            train_accuracy=tr,
            test_loss=0.5 / (i + 1),
            test_accuracy=te,
            lr=0.01,
            seconds=2.0,
        )
        for i, (te, tr) in enumerate(zip(tests, trains, strict=True))
    ]


def make_volume(root: Path) -> None:
    runs = {
        "lighter": (20954, [97.0, 98.0, 98.5, 98.4], [97.5, 99.0, 99.6, 99.7]),
        "gap": (9490, [96.0, 98.9, 99.1, 99.0], [95.0, 98.0, 98.5, 98.7]),
    }
    for step, (params, tests, trains) in runs.items():
        history = epochs(tests, trains)
        best = max(history, key=lambda e: (e.test_accuracy, -e.epoch))
        metrics = fake_metrics(step).model_copy(
            update={
                "params": params,
                "epochs": history,
                "best_epoch": best.epoch,
                "best_test_accuracy": best.test_accuracy,
                "recipe": {"seed": 1, "epochs": 4},
            }
        )
        publish(root, step, b"onnx", fake_summary(step), metrics)


def test_report_from_a_volume(tmp_path: Path) -> None:
    make_volume(tmp_path / "models")
    assert report.collect(tmp_path / "models", tmp_path / "reports" / "runs") == [
        "lighter/seed-1",
        "gap/seed-1",
    ]
    first = report.write_report(tmp_path / "reports").read_bytes()
    plots = sorted(p.name for p in (tmp_path / "reports" / "plots").iterdir())
    assert plots == ["accuracy_vs_params.png", "gap.png", "lighter.png"]
    assert report.write_report(tmp_path / "reports").read_bytes() == first
    text = first.decode()
    assert (
        "| 3 | `lighter` | 20,954 | 4 | 99.70 (4) | 98.50 (3) | 98.00 / 98.50 / 98.40 | 1 |" in text
    )
    # lighter's best epoch: train 99.6 vs test 98.5, a 1.1-point gap: over-fitting.
    assert "Train-test gap at the best epoch: +1.10 points" in text and "over-fitting:" in text
    # gap's best epoch 3: train 98.5 < test 99.1: no over-fitting; compared with lighter.
    assert "Train-test gap at the best epoch: -0.60 points" in text
    assert (
        "Against `lighter`: 9,490 params vs 20,954 (0.45x), best test accuracy +0.60 points" in text
    )
    assert "no run of ours comes near it" in text  # the seed's 99.99 % claim, said once
    assert "Not in this report yet (no full run committed): setup, skeleton, batchnorm," in text


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no runs under"):
        report.write_report(tmp_path)


COMMITTED = ROOT / "reports"


@pytest.mark.skipif(not (COMMITTED / "REPORT.md").exists(), reason="no committed report yet")
def test_the_committed_report_regenerates_byte_for_byte(tmp_path: Path) -> None:
    shutil.copytree(COMMITTED / "runs", tmp_path / "runs")
    regenerated = report.write_report(tmp_path).read_text()
    assert regenerated == (COMMITTED / "REPORT.md").read_text()


@pytest.mark.skipif(not (COMMITTED / "REPORT.md").exists(), reason="no committed report yet")
def test_every_number_in_the_readme_table_is_the_metrics() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    table = report.comparison_table(report.load_runs(COMMITTED / "runs"))
    rows = [line for line in section.splitlines() if re.match(r"^\| \d+ \| `", line)]
    assert rows == table[2:] and len(rows) >= 1
