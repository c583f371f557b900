"""The step report: computed from run metrics alone, reproducible byte for byte."""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from matplotlib.text import Text

from tests.conftest import ROOT
from tests.volume_fixtures import fake_metrics, fake_summary
from trainer import report
from trainer.resume import code_digest, code_hashes
from trainer.steps import FINAL, TINY
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
        "| 3 | `lighter` | 20,954 | 4 | 99.70 (4) | 98.50 (3) | 98.00 / 98.50 / 98.40 | 1 "
        "| 98.40 | 98.00 |" in text
    )
    # lighter's best epoch: train 99.6 vs test 98.5, a 1.1-point gap: over-fitting.
    assert "Train-test gap at the best epoch: +1.10 points" in text and "over-fitting:" in text
    # gap's best epoch 3: train 98.5 < test 99.1: no over-fitting; compared with lighter.
    assert "Train-test gap at the best epoch: -0.60 points" in text
    # Its recipe has no augmentation and its layers no dropout: the cause given is the only one.
    assert "(train accuracy is averaged over an epoch of improving weights, test" in text
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


def tried_rows() -> list[list[str]]:
    """The rows of the "What got it there" table (docs/steps.md) that name their metrics folder."""
    page = (ROOT / "docs" / "steps.md").read_text()
    section = page.split("## What got it there")[1].split("\n## ")[0]
    cells = [table_cells(line) for line in section.splitlines()]
    return [row for row in cells if len(row) == 10 and row[-1].startswith("`reports/")]


def table_cells(line: str) -> list[str]:
    """A Markdown table row's cells, stripped; a pipe escaped as ``\\|`` stays in its cell."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


@pytest.mark.skipif(not (COMMITTED / "REPORT.md").exists(), reason="no committed report yet")
def test_every_tried_run_in_the_readme_is_its_metrics() -> None:
    rows = tried_rows()
    assert len(rows) >= 10
    for step, params, _, _, seed, last3, final, held, _, folder in rows:
        run = report.load_run(ROOT / folder.strip("`"))
        recorded = (run.metrics.step, run.metrics.params, run.seed)
        assert recorded == (step.strip("`"), int(params.replace(",", "")), int(seed)), folder
        assert last3 == " / ".join(map(report.pct, run.last3)), folder
        passed = min(run.last3) >= report.ASSIGNMENT[1]
        assert (final, held) == (report.pct(run.final), "yes" if passed else "**no**"), folder


def under_3000_rows() -> list[dict[str, str]]:
    """The rows of the tables in "Under 3,000 parameters" (docs/steps.md), each by its column
    names, with the folder of its metrics: the tables name it inside their day's folder."""
    page = (ROOT / "docs" / "steps.md").read_text()
    section = page.split("## Under 3,000 parameters")[1].split("\n## ")[0]
    rows: list[dict[str, str]] = []
    header: list[str] = []
    day = "2026-12-06"
    for line in section.splitlines():
        if line.startswith("### "):
            day = line.split()[1].rstrip(":,")
        if not line.startswith("|"):
            header = []
            continue
        cells = table_cells(line)
        if not header:
            header = cells
        elif not set(cells[0]) <= set("-:"):
            folder = f"reports/tries/{day}/{cells[-1].strip('`')}"
            rows.append(dict(zip(header, cells, strict=True)) | {"folder": folder})
    return rows


@pytest.mark.skipif(not (COMMITTED / "REPORT.md").exists(), reason="no committed report yet")
def test_every_run_under_3000_parameters_in_the_docs_is_its_metrics() -> None:
    rows = under_3000_rows()
    assert len(rows) >= 94
    for row in rows:
        run = report.load_run(ROOT / row["folder"])
        recorded = (run.metrics.step, run.metrics.params, run.seed)
        assert recorded == ("tiny", int(row["params"].replace(",", "")), int(row["seed"])), row
        assert row["last 3 test %"] == " / ".join(map(report.pct, run.last3)), row
        assert row["final"] == report.pct(run.final), row
        held = min(run.last3) >= report.ASSIGNMENT[1]
        assert row["all >= 99.4"] == ("yes" if held else "**no**"), row
        if "final test loss" in row:
            assert row["final test loss"] == f"{run.metrics.epochs[-1].test_loss:.4f}", row


def run_with(recipe: dict, layer_types: list[str], train: float, test: float) -> report.Run:
    rows = [
        fake_summary("gap").layers[0].model_copy(update={"type": t, "name": f"{t}-{i}"})
        for i, t in enumerate(layer_types)
    ]
    summary = fake_summary("gap").model_copy(update={"layers": rows})
    metrics = fake_metrics("gap").model_copy(
        update={"recipe": recipe, "epochs": epochs([test, test - 0.1], [train, train])}
    )
    return report.Run(1, metrics, summary)


@pytest.mark.parametrize(
    ("recipe", "layers", "train", "test", "said", "not_said"),
    [
        # setup: no augmentation, no dropout, test above train: only the averaging is the cause.
        ({"schedule": "constant"}, ["Conv2d"], 97.8, 98.5, ["averaged over an epoch"],
         ["rotated", "shifted", "dropout"]),
        ({"rotation": 5.0, "translate": 0.03}, ["Conv2d"], 99.2, 99.5,
         ["rotated up to 5.0 degrees and shifted up to 3%", "averaged"], ["dropout"]),
        ({"rotation": 5.0, "scale": 0.09, "brightness": 0.2}, ["Conv2d"], 99.2, 99.5,
         ["rotated up to 5.0 degrees and zoomed in or out by up to 9% and brightened or "
          "dimmed by up to 20%"], ["shifted"]),
        ({}, ["Conv2d", "Dropout"], 98.7, 99.1, ["dropout is on while training", "averaged"],
         ["rotated"]),
        ({"ema": 0.999}, ["Conv2d"], 99.2, 99.5,
         ["an average over the last steps'", "the epoch's final average"], ["dropout"]),
        # Within a tenth of a point either way is noise, not a difference to explain.
        ({"rotation": 5.0}, ["Dropout"], 99.40, 99.40, ["no significant over-fitting"],
         ["above train", "-0.00"]),
        ({}, ["Conv2d"], 99.9, 99.3, ["+0.60 points", "over-fitting: the model fits"], []),
    ],
)  # fmt: skip
def test_the_analysis_gives_only_causes_the_recipe_has(
    recipe: dict, layers: list[str], train: float, test: float, said: list[str], not_said: list[str]
) -> None:
    text = " ".join(report.analysis(run_with(recipe, layers, train, test), None))
    assert all(s in text for s in said), text
    assert not any(s in text for s in not_said), text


@pytest.mark.parametrize(
    ("schedule", "said"),
    [("onecycle", "OneCycle has annealed"), ("constant", "still rising")],
)
def test_a_best_last_epoch_is_explained_by_the_schedule(schedule: str, said: str) -> None:
    run = run_with({"schedule": schedule}, ["Conv2d"], 99.0, 99.0)
    best_last = run.metrics.model_copy(update={"epochs": epochs([98.0, 99.0], [98.0, 99.0])})
    best_last = best_last.model_copy(update={"best_epoch": 2})
    assert said in " ".join(report.analysis(report.Run(1, best_last, run.summary), None))


@pytest.mark.skipif(not (COMMITTED / "runs").exists(), reason="no committed runs yet")
def test_the_accuracy_plot_labels_never_overlap_and_mark_the_assignment() -> None:
    fig = report.params_figure(report.load_runs(COMMITTED / "runs"))
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    labels = list(ax.texts)
    assert len(labels) == len(report.load_runs(COMMITTED / "runs"))
    # The text alone (an Annotation's own extent includes its leader line).
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    boxes.append(ax.get_legend().get_window_extent(renderer))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    assert all(ax.bbox.contains(*box.p0) and ax.bbox.contains(*box.p1) for box in boxes)
    lines = {(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.lines}
    assert ((0, 1), (99.4, 99.4)) in lines and ((8000, 8000), (0, 1)) in lines


@pytest.mark.parametrize(
    ("recipe", "line"),
    [
        ({"epochs": 15, "lr": 0.01, "ema": 0.0, "seed": 1}, "epochs 15, lr 0.01, seed 1"),
        # The final and tiny steps differ by their weight average alone: the line must say so.
        ({"epochs": 15, "ema": 0.9995, "seed": 2}, "epochs 15, ema 0.9995, seed 2"),
        ({"lr": 0.05, "weight_decay": 5e-05, "label_smoothing": 0.1},
         "lr 0.05, weight_decay 5e-05, label_smoothing 0.1"),
        # tiny's augmentation beyond the final step's.
        ({"rotation": 5.0, "scale": 0.09, "brightness": 0.2, "ema": 0.9995},
         "rotation 5.0, scale 0.09, brightness 0.2, ema 0.9995"),
    ],
)  # fmt: skip
def test_the_recipe_line_names_the_regularisers_a_recipe_uses(recipe: dict, line: str) -> None:
    assert report.recipe_line(recipe) == line


def run_trained_by(
    code: dict[str, str] | None,
    commit: str | None,
    step: str = "gap",
    recipe: dict[str, object] | None = None,
) -> report.Run:
    metrics = fake_metrics(step)
    provenance = metrics.provenance.model_copy(update={"code": code, "git_commit": commit})
    update = {"provenance": provenance, "recipe": recipe or {}}
    return report.Run(1, metrics.model_copy(update=update), fake_summary(step))


MAINS = code_hashes("gap")
CLEAN = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("code", "commit", "label"),
    [
        (MAINS, CLEAN, None),
        (MAINS, CLEAN + "-dirty", "trained at 0123456-dirty: from uncommitted changes"),
        (MAINS | {"trainer/train.py": "ast:0000000000000000"}, CLEAN,
         "trained at 0123456; main's trainer/train.py differ"),
        ({k: v for k, v in MAINS.items() if k != "trainer/steps.py:GapNet"}, CLEAN,
         "trained at 0123456; main's trainer/steps.py:GapNet differ"),
        (None, CLEAN, "trained at 0123456, before the trainer recorded its code's hashes"),
        (None, None, "trained at ?, before the trainer recorded its code's hashes"),
        # Recorded before the syntax-tree digest: compared with the raw source's sha256.
        (code_hashes("gap", legacy=True), CLEAN, None),
    ],
)  # fmt: skip
def test_a_run_is_mains_only_when_main_has_its_code(
    code: dict[str, str] | None, commit: str | None, label: str | None
) -> None:
    assert run_trained_by(code, commit).older_code == label


@pytest.mark.parametrize(
    ("step", "recipe", "label"),
    [
        ("gap", {"seed": 3}, None),  # each run picks its seed
        ("gap", {"ema": 0.999}, "trained at 0123456 with ema 0.999 where main has 0.0"),
        ("gap", {"lr": 0.1, "epochs": 20},
         "trained at 0123456 with epochs 20 where main has 15, lr 0.1 where main has 0.01"),
        ("tiny", asdict(TINY) | {"seed": 2}, None),
        # Recorded before a field existed: the run trained with the field's default.
        ("scheduler", {k: v for k, v in asdict(FINAL).items() if k != "ema"},
         f"trained at 0123456 with ema 0.0 where main has {FINAL.ema}"),
    ],
)  # fmt: skip
def test_a_run_is_mains_only_when_main_has_its_recipe(
    step: str, recipe: dict[str, object], label: str | None
) -> None:
    assert run_trained_by(code_hashes(step), CLEAN, step, recipe).older_code == label


def test_comments_and_docstrings_are_not_code() -> None:
    source = 'def f(x):\n    """Doubles."""\n    return 2 * x  # twice\n'
    assert code_digest(source) == code_digest("def f(x):\n    return 2 * x\n")
    assert code_digest(source) != code_digest("def f(x):\n    return 3 * x\n")


@pytest.mark.skipif(not (COMMITTED / "REPORT.md").exists(), reason="no committed report yet")
def test_every_committed_run_is_mains_or_labelled_older() -> None:
    """A result trained by other code than main's, or from a dirty tree, is named as such in
    the report and in the README's table: change the code a run depends on and this fails
    until the report is regenerated (or the step trained again)."""
    text = (COMMITTED / "REPORT.md").read_text()
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    for step, step_runs in report.load_runs(COMMITTED / "runs").items():
        for run in step_runs:
            if run.older_code is None:
                continue
            assert f"* `{step}` seed {run.seed}: {run.older_code}." in text, (step, run.seed)
            row = next(
                line
                for line in table.splitlines()
                if line.startswith(f"| {run.metrics.number} | `{step}`")
            )
            assert "**older**" in row and run.commit in row, row
