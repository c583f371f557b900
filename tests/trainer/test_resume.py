"""A killed training loses at most one epoch, and resuming gives the numbers of never stopping.

The real test kills a real `python -m trainer run --resume` with SIGKILL at random moments,
several times, and compares what it finally publishes with an uninterrupted run's, epoch by
epoch. The others check the pieces: restoring a snapshot in-process, refusing a state from
another run, skipping what is already published.
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import ROOT
from trainer.cli import published_match
from trainer.data import read_mnist_folder
from trainer.resume import (
    Fingerprint,
    ResumeError,
    code_hashes,
    load_state,
    save_state,
    state_path,
)
from trainer.steps import get_step
from trainer.train import FitResult, fit
from volume import Metrics, read_index, read_version

# The final step: OneCycle per batch, augmentation (torch's RNG each batch), BatchNorm. Dropout
# (the RNG in the forward pass) is in `dropout`, checked in-process below.
STEP = "scheduler"
EPOCHS = 4
LIMIT = "300"  # 10 batches an epoch: an epoch takes about a second on this CPU


def without_seconds(metrics: Metrics) -> list[dict[str, object]]:
    return [epoch.model_dump(exclude={"seconds"}) for epoch in metrics.epochs]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Two threads on two shared cores mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("step", ["dropout", STEP])
def test_a_restored_snapshot_goes_on_as_if_never_stopped(
    mnist_dir: Path, step: str, one_thread: None
) -> None:
    mnist = read_mnist_folder(mnist_dir)
    train, test = mnist.train.head(96), mnist.test.head(64)
    recipe = replace(get_step(step).recipe, epochs=3, batch_size=32)

    def new_model() -> torch.nn.Module:
        torch.manual_seed(recipe.seed)
        return get_step(step).build()

    def numbers(result: FitResult) -> list[dict[str, object]]:
        return [epoch.model_dump(exclude={"seconds"}) for epoch in result.epochs]

    snapshots: list[dict[str, Any]] = []
    whole = fit(new_model(), train, test, recipe, False, log=False, save=snapshots.append)
    assert numbers(whole) == numbers(fit(new_model(), train, test, recipe, False, log=False))
    torch.manual_seed(12345)  # another process, whose RNGs are anywhere, resumes epoch 1's
    resumed = fit(new_model(), train, test, recipe, False, log=False, resume=snapshots[0])
    assert numbers(resumed) == numbers(whole)
    assert resumed.best_epoch == whole.best_epoch
    for name, tensor in whole.best_state.items():
        assert torch.equal(tensor, resumed.best_state[name]), name


def run_args(out: Path, mnist_dir: Path, *more: str) -> list[str]:
    return [
        sys.executable, "-m", "trainer", "run", "--steps", STEP, "--epochs", str(EPOCHS),
        "--limit", LIMIT, "--device", "cpu", "--data-dir", str(mnist_dir), "--out", str(out),
        *more,
    ]  # fmt: skip


# One thread: the numbers depend on the thread count (so both runs use the same), and two
# threads on two shared cores mostly wait for each other.
ENV = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 45 s alone on 2 cores; far more on a crowded machine
def test_sigkilled_at_random_moments_the_resumed_run_equals_an_uninterrupted_one(
    mnist_dir: Path, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    context = f"(kill moments from random.Random({seed}))"
    started = time.monotonic()
    reference = subprocess.run(
        run_args(tmp_path / "reference", mnist_dir), env=ENV, cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]
    reference_seconds = time.monotonic() - started

    out, log = tmp_path / "killed", tmp_path / "killed.log"
    kills: list[int] = []  # the last epoch each killed run had logged
    seen: list[int | None] = []  # what each run resumed after (0: none; None: killed before)
    for _ in range(20):
        with open(log, "w") as output:
            process = subprocess.Popen(
                run_args(out, mnist_dir, "--resume"), env=ENV, cwd=ROOT, stdout=output,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        if len(kills) < 3:
            # Wait for a random epoch's line (0: none; the first kill lands mid-training), then
            # a random moment into what follows: an epoch, saving its state, the export.
            target = rng.randint(0, EPOCHS) if kills else rng.randint(1, EPOCHS - 1)
            while process.poll() is None and progress(log.read_text()) < target:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.15))  # an epoch takes 0.1-0.5 s here
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                kills.append(progress(log.read_text()))
        assert process.wait(timeout=300) in (0, -signal.SIGKILL), log.read_text()[-3000:]
        seen.append(resumed_after(log.read_text()))
        if process.returncode == 0:
            break
    assert process.returncode == 0, f"never finished {context}"
    # Each restart went on from at least the last epoch any killed run had logged: a kill loses
    # at most the epoch in progress.
    done = 0
    for killed_at, resumed in zip([0, *kills], seen, strict=False):
        done = max(done, killed_at)
        assert resumed is None or resumed >= done, (kills, seen, context)
    assert any(seen), f"no kill landed after an epoch: nothing was resumed {context}"
    assert len(kills) == 3, (kills, seen, context)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"\n{len(kills)} SIGKILLs after epochs {kills}, resumed after {seen[1:]}; "
        f"{time.monotonic() - started:.0f} s in all ({cpu.ru_utime + cpu.ru_stime:.0f} CPU-s of "
        f"the trainers), the uninterrupted run {reference_seconds:.0f} s"
    )

    def published(root: Path) -> tuple[Metrics, str]:
        entry = read_index(root).steps[STEP]
        return read_version(root, STEP, entry).metrics, entry.model_sha256

    (expected, expected_sha), (got, got_sha) = published(tmp_path / "reference"), published(out)
    assert without_seconds(got) == without_seconds(expected), context
    assert (got.best_epoch, got.best_test_accuracy) == (
        expected.best_epoch,
        expected.best_test_accuracy,
    )
    assert got_sha == expected_sha, f"the exported models differ {context}"
    assert not state_path(out, STEP).exists()  # published: nothing left to resume
    assert list((out / ".staging").iterdir()) == []


def resumed_after(text: str) -> int | None:
    """The epoch a run said it resumed after: 0 if it started afresh, None if it had not said."""
    found = re.search(rf"== \d+\. {STEP}: (resuming after epoch (\d+)|.* params)", text)
    return None if found is None else int(found.group(2) or 0)


def progress(text: str) -> int:
    """The last epoch a run's log says is done: one it logged, or the one it resumed after."""
    logged = re.findall(rf"{STEP} epoch +(\d+):", text)
    return max([resumed_after(text) or 0, *(int(epoch) for epoch in logged)])


# --- refusing what another run saved; skipping what is published ---------------------------


def fingerprint(mnist_dir: Path, **recipe: object) -> Fingerprint:
    mnist = read_mnist_folder(mnist_dir)
    step = get_step(STEP)
    return Fingerprint.of(STEP, replace(step.recipe, **recipe), mnist.checksums, 300, "cpu")


def test_a_state_from_another_recipe_or_code_is_refused(mnist_dir: Path, tmp_path: Path) -> None:
    saved = fingerprint(mnist_dir, epochs=EPOCHS)
    save_state(tmp_path, saved, {"history": []}, {})
    assert load_state(tmp_path, saved) is not None
    with pytest.raises(ResumeError, match=r"recipe lr 0\.065 -> 0\.1.*--fresh"):
        load_state(tmp_path, fingerprint(mnist_dir, epochs=EPOCHS, lr=0.1))
    other_code = replace(saved, code=saved.code | {"trainer/train.py": "0" * 16})
    with pytest.raises(ResumeError, match=r"code of trainer/train\.py changed"):
        load_state(tmp_path, other_code)
    with pytest.raises(ResumeError, match="limit 300 -> None"):
        load_state(tmp_path, replace(saved, limit=None))


def test_a_step_model_change_changes_only_that_steps_code_hash() -> None:
    assert "trainer/steps.py:GapNet" in code_hashes("gap")
    assert "trainer/steps.py:GapNet" not in code_hashes("lighter")
    # batchnorm is a LighterNet: a change to LighterNet re-trains both.
    assert "trainer/steps.py:LighterNet" in code_hashes("batchnorm")


@pytest.mark.parametrize(
    ("step", "classes"),
    [
        ("setup", {"SetupNet"}),
        ("batchnorm", {"BatchNormNet", "LighterNet"}),
        ("gap", {"GapNet"}),
        # The blocks a model is built from count too: a change to Separable re-trains both.
        ("scheduler", {"SchedulerNet", "SeparableNet", "Separable"}),
        ("tiny", {"TinyNet", "Separable"}),
    ],
)
def test_a_steps_code_hash_covers_every_class_its_model_is_made_of(
    step: str, classes: set[str]
) -> None:
    hashed = {k.split(":")[1] for k in code_hashes(step) if k.startswith("trainer/steps.py:")}
    assert hashed == classes


@pytest.mark.slow
def test_the_cli_refuses_skips_and_starts_fresh(mnist_dir: Path, tmp_path: Path) -> None:
    """One line each: a state from another recipe is refused (with what differs and --fresh);
    --fresh starts over; --resume then skips the step it published."""
    save_state(tmp_path, fingerprint(mnist_dir, epochs=2), {"history": []}, {})
    base = ["run", "--steps", STEP, "--epochs", "2", "--limit", LIMIT, "--quiet"]
    base += ["--device", "cpu", "--data-dir", str(mnist_dir), "--out", str(tmp_path)]
    refused = trainer(*base, "--set", "lr=0.1", "--resume")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert "recipe lr 0.065 -> 0.1" in line and "--fresh" in line and "scheduler.resume.pt" in line
    fresh = trainer(*base, "--set", "lr=0.1", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert "published scheduler" in fresh.stderr
    again = trainer(*base, "--set", "lr=0.1", "--resume")
    assert again.returncode == 0, again.stderr
    (skipped,) = [x for x in again.stderr.splitlines() if "skipped" in x]
    assert skipped.startswith(f"== {get_step(STEP).info.number}. {STEP}: skipped: published")
    # Another recipe (the catalogue's lr) would be trained: the published version is not it.
    assert published_match(tmp_path, fingerprint(mnist_dir, epochs=2, lr=0.1)) is not None
    assert published_match(tmp_path, fingerprint(mnist_dir, epochs=2)) is None


def trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args], cwd=ROOT, env=ENV, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
