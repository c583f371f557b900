"""Training for real on small subsets: learning, determinism, the CLI and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from trainer.cli import parse_overrides, step_at_index
from trainer.data import read_mnist_folder
from trainer.loop import evaluate, make_ema, make_optimizer, make_scheduler
from trainer.steps import get_step
from trainer.train import fit
from volume import STEP_SLUGS, read_index, read_version


def trainer_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_same_seed_same_numbers_on_cpu(mnist_dir: Path) -> None:
    mnist = read_mnist_folder(mnist_dir)
    recipe = replace(get_step("batchnorm").recipe, epochs=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = get_step("batchnorm").build()
        runs.append(fit(model, mnist.train.head(512), mnist.test.head(256), recipe, progress=False))
    assert runs[0].epochs[0].model_copy(update={"seconds": 0}) == runs[1].epochs[0].model_copy(
        update={"seconds": 0}
    )


def test_the_weight_average_warms_up_then_decays_at_the_recipes_rate() -> None:
    recipe = replace(get_step("tiny").recipe, ema=0.2)  # reached at the third update
    model = torch.nn.Linear(1, 1, bias=False)
    ema = make_ema(model, recipe)
    assert ema is not None and make_ema(model, replace(recipe, ema=0.0)) is None
    expected = None
    for n, weight in enumerate([4.0, 8.0, 2.0, 6.0]):
        with torch.no_grad():
            model.weight.fill_(weight)
        ema.update_parameters(model)
        # The first update copies; then decay (1 + n) / (10 + n), at most recipe.ema.
        decay = min(recipe.ema, (1 + n) / (10 + n))
        expected = weight if expected is None else decay * expected + (1 - decay) * weight
        assert ema.module.weight.item() == pytest.approx(expected), n


def test_an_averaged_recipe_tests_and_keeps_the_average(mnist_dir: Path) -> None:
    mnist = read_mnist_folder(mnist_dir)
    train, test = mnist.train.head(640), mnist.test.head(500)
    recipe = replace(get_step("tiny").recipe, epochs=2)
    torch.manual_seed(3)
    model = get_step("tiny").build()
    result = fit(model, train, test, recipe, progress=False, log=False)
    kept = get_step("tiny").build()
    kept.load_state_dict(result.best_state)
    assert evaluate(kept, test)[1] == result.best.test_accuracy  # what was tested was kept
    raw = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    assert any(not torch.equal(v, result.best_state[k]) for k, v in raw.items())


@pytest.mark.slow
def test_one_epoch_on_a_subset_learns_and_publishes(mnist_dir: Path, tmp_path: Path) -> None:
    result = trainer_cli(
        "run", "--steps", "batchnorm", "--epochs", "1", "--limit", "3000",
        "--data-dir", str(mnist_dir), "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "device: cpu" in result.stderr
    entry = read_index(tmp_path).steps["batchnorm"]
    metrics = read_version(tmp_path, "batchnorm", entry).metrics
    assert metrics.best_test_accuracy > 50.0  # chance is 10 %
    (epoch,) = metrics.epochs
    assert epoch.train_loss > 0 and epoch.seconds > 0 and epoch.lr == 0.01
    assert metrics.provenance.limit == 3000 and metrics.provenance.seed == 1
    assert metrics.provenance.data["train-images-idx3-ubyte"].startswith("ba891046")
    assert metrics.provenance.versions["torch"].startswith("2.14.1")
    assert metrics.recipe["epochs"] == 1
    assert (tmp_path / "checkpoints" / "batchnorm.pt").exists()
    listing = trainer_cli("ls", "--out", str(tmp_path))
    assert "batchnorm" in listing.stdout and entry.version in listing.stdout


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["lr=0.1"], {"lr": 0.1}),
        (["batch_size=32", "translate=0"], {"batch_size": 32, "translate": 0.0}),
        (["nesterov=false", "optimizer=adam"], {"nesterov": False, "optimizer": "adam"}),
        (["label-smoothing=0.05"], {"label_smoothing": 0.05}),
    ],
)
def test_set_overrides_recipe_fields_with_their_types(
    pairs: list[str], expected: dict[str, object]
) -> None:
    overrides = parse_overrides(pairs)
    assert overrides == expected
    assert all(type(overrides[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize(
    ("epochs", "steps_per_epoch", "pct_start"),
    [
        (15, 1875, 0.1),  # the final step's full run
        (1, 10, 0.1),  # a warm-up of exactly one step: OneCycleLR alone divides by zero
        (2, 2, 0.25),  # the same, from another recipe
        (1, 3, 0.1),  # a warm-up under one step
        (1, 1, 0.1),
    ],
)
def test_onecycle_runs_to_its_end_however_short(
    epochs: int, steps_per_epoch: int, pct_start: float
) -> None:
    recipe = replace(get_step("scheduler").recipe, epochs=epochs, pct_start=pct_start)
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch)
    assert scheduler is not None
    rates = []  # the learning rate of each optimizer step
    for _ in range(epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert all(0 < rate <= recipe.lr for rate in rates)


@pytest.mark.slow  # starts a process
def test_summary_command_prints_the_seed_table() -> None:
    result = trainer_cli("summary", "setup")
    assert result.returncode == 0
    assert "Total params: 593,200" in result.stdout
    assert "            Conv2d-1           [-1, 32, 26, 26]             320" in result.stdout


@pytest.mark.slow  # starts a process
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--steps", "gap", "--data-dir", "/nonexistent/mnist"], "does not exist"),
        (["run", "--steps", "nine", "--data-dir", "."], "unknown step 'nine'"),
        (["summary", "../x"], "unknown step '../x'"),
        (["export", "gap", "--data-dir", "/nonexistent"], "does not exist"),
        (["run", "--steps", "gap", "--set", "lr=fast", "--data-dir", "."], "lr takes a float"),
        (["run", "--steps", "gap", "--set", "speed=2", "--data-dir", "."], "KEY one of epochs,"),
        (["run", "--steps", "gap", "--set", "nesterov=yes", "--data-dir", "."], "takes a bool"),
        (["run", "--step-index", "99", "--data-dir", "."], "completions must be"),
        (["run", "--step-index", "-1", "--data-dir", "."], "step index -1"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = (
        trainer_cli(*args, "--out", str(tmp_path)) if args[0] != "summary" else trainer_cli(*args)
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.slow  # starts a process
def test_export_without_a_checkpoint_says_to_train(mnist_dir: Path, tmp_path: Path) -> None:
    result = trainer_cli("export", "gap", "--data-dir", str(mnist_dir), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "train it first with `python -m trainer run --steps gap`" in result.stderr


@pytest.mark.slow  # starts a process
def test_metrics_json_is_plain_json(mnist_dir: Path, tmp_path: Path) -> None:
    """The published metrics are readable without this project's code."""
    result = trainer_cli(
        "run", "--steps", "gap", "--epochs", "1", "--limit", "500", "--quiet",
        "--data-dir", str(mnist_dir), "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    version = json.loads((tmp_path / "index.json").read_text())["steps"]["gap"]["version"]
    metrics = json.loads((tmp_path / "gap" / version / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and len(metrics["epochs"]) == 1
    assert metrics["verification"]["disagreements"] == 0


def test_a_step_index_names_each_step_once_in_the_catalogues_order() -> None:
    """What an Indexed Job's pods 0..N-1 train, given --step-index $(JOB_COMPLETION_INDEX)."""
    assert [step_at_index(i) for i in range(len(STEP_SLUGS))] == [[s] for s in STEP_SLUGS]
