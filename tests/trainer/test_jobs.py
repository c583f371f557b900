"""Steps side by side (``--jobs``) into one volume, and resuming by default through the
Makefile's own command lines."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainer.cli import build_parser
from volume import read_index
from volume.progress import read_progress

STEPS = ("tiny", "gap", "dropout")  # three steps on two jobs: one waits for a free job


def trainer_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {
        "PYTHONPATH": str(ROOT)
    }


@pytest.mark.slow
def test_jobs_publish_every_step_once_into_one_volume(mnist_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "run", "--steps", ",".join(STEPS), "--jobs", "2",
         "--epochs", "1", "--limit", "64", "--out", str(tmp_path), "--data-dir", str(mnist_dir)],
        cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("threads: 2 jobs x "), lines[0]
    index = read_index(tmp_path)
    assert sorted(index.steps) == sorted(STEPS)
    for step in STEPS:
        # One version each: no step trained twice, none lost.
        versions = [p.name for p in (tmp_path / step).iterdir() if p.is_dir()]
        assert versions == [index.steps[step].version], versions
        # Each job's lines come prefixed by its step: its epoch in one line, its publishing.
        prefix = rf"{step}\s* \| "
        assert any(re.match(rf"{prefix}{step} epoch  1: train loss", x) for x in lines), lines
        published = [x for x in lines if re.match(rf"{prefix}published {step} ", x)]
        assert len(published) == 1, lines
    progress = read_progress(tmp_path)
    assert {s: p.state for s, p in progress.items()} == dict.fromkeys(STEPS, "published")
    assert {s: p.version for s, p in progress.items()} == {s: index.steps[s].version for s in STEPS}
    assert lines[-1].startswith("done: 3/3 steps published in "), lines[-1]


def make_commands(target: str, *assignments: str) -> list[list[str]]:
    """The `python -m trainer run` lines that `make -n TARGET` would run."""
    done = subprocess.run(
        ["make", "-n", target, f"PY={sys.executable}", *assignments],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    joined = done.stdout.replace("\\\n", " ")
    return [
        shlex.split(line)
        for line in joined.splitlines()
        if "-m trainer run" in line and not line.lstrip().startswith("#")
    ]


@pytest.mark.parametrize("target", ["train", "demo"])
def test_make_resumes_unless_told_fresh(target: str) -> None:
    (command,) = make_commands(target)
    args = build_parser().parse_args(command[command.index("-m") + 2 :])
    assert args.resume
    (command,) = make_commands(target, "TRAIN_ARGS=--fresh")
    args = build_parser().parse_args(command[command.index("-m") + 2 :])
    assert not args.resume


@pytest.mark.slow
def test_a_second_make_train_goes_on_where_the_first_ended(mnist_dir: Path, tmp_path: Path) -> None:
    """`make train`'s own command, twice (a subset through TRAIN_ARGS): the second run trains
    nothing, it finds the step published from the same recipe, code and data."""
    extra = f"--steps tiny --epochs 1 --limit 64 --out {tmp_path} --data-dir {mnist_dir}"
    (command,) = make_commands("train", f"TRAIN_ARGS={extra}")
    command = [c for c in command if "=" not in c or c.startswith("-")]  # VAR=value prefixes

    def run() -> str:
        done = subprocess.run(
            command, cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    first = run()
    version = read_index(tmp_path).steps["tiny"].version
    assert f"published tiny {version}" in first
    second = run()
    assert f"== 8. tiny: skipped: published version {version}" in second, second
    assert "epoch  1" not in second
    assert read_index(tmp_path).steps["tiny"].version == version
