"""The thread policy: how many steps train at once and with how many threads, who chose it, and
the OpenMP wait policy set before torch loads unless the user set one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainer import threads


@pytest.mark.parametrize(
    ("cores", "steps", "device", "jobs", "count", "environ", "expected", "why"),
    [
        # On a CPU: a job per core, one thread each.
        (2, 8, "cpu", None, None, {}, (2, 1), "a job per core (2 cores)"),
        (8, 8, "cpu", None, None, {}, (8, 1), "a job per core (8 cores)"),
        # Fewer steps than cores: a job per step, still one thread each (a busy core).
        (2, 1, "cpu", None, None, {}, (1, 1), "1 step to train"),
        (16, 3, "cpu", None, None, {}, (3, 1), "one thread a job"),
        (1, 8, "cpu", None, None, {}, (1, 1), "a job per core (1 cores)"),
        # CUDA: one job, the GPU is shared.
        (16, 8, "cuda", None, None, {}, (1, 16), "one job on the GPU"),
        # The user's word wins: --jobs, --threads, then the usual variables.
        (2, 8, "cpu", 1, None, {}, (1, 1), "--jobs 1"),
        (2, 8, "cpu", 1, 1, {}, (1, 1), "--threads 1"),
        (2, 8, "cpu", 1, None, {"OMP_NUM_THREADS": "1"}, (1, 1), "OMP_NUM_THREADS=1"),
        (4, 8, "cpu", None, None, {"MKL_NUM_THREADS": "3"}, (4, 3), "MKL_NUM_THREADS=3"),
        (2, 8, "cpu", 1, 4, {"OMP_NUM_THREADS": "1"}, (1, 4), "--threads 4"),
        # A variable that is no count is not a choice.
        (2, 1, "cpu", None, None, {"OMP_NUM_THREADS": "many"}, (1, 1), "one thread a job"),
        (2, 1, "cpu", None, None, {"OMP_NUM_THREADS": "0"}, (1, 1), "one thread a job"),
        # More jobs than steps asked: one a step.
        (2, 2, "cpu", 5, None, {}, (2, 1), "2 steps to train"),
    ],
)
def test_the_choice_and_its_reason(
    cores: int,
    steps: int,
    device: str,
    jobs: int | None,
    count: int | None,
    environ: dict[str, str],
    expected: tuple[int, int],
    why: str,
) -> None:
    choice = threads.choose(cores, steps, device, jobs, count, environ)
    assert (choice.jobs, choice.threads) == expected
    assert why in choice.why
    assert choice.why.startswith(f"{expected[0]} job")


@pytest.mark.parametrize(
    ("environ", "after"),
    [
        ({}, "PASSIVE"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # the user's own stays
        ({"GOMP_SPINCOUNT": "1000"}, None),  # a spin count is a choice of wait too
    ],
)
def test_wait_policy_only_where_the_user_set_none(
    environ: dict[str, str], after: str | None
) -> None:
    env = dict(environ)
    threads.prepare_openmp(env)
    assert env.get("OMP_WAIT_POLICY") == after
    words = threads.wait_policy(env)
    assert ("as set" in words) == bool(environ), words


@pytest.mark.slow
def test_the_users_variables_win_and_the_first_line_says_so(
    mnist_dir: Path, tmp_path: Path
) -> None:
    # The policy's own choice is in the first line of test_progress's killed trainer.
    chosen_by_user = (*threads.WAIT_VARIABLES, *threads.THREAD_VARIABLES)
    env = {k: v for k, v in os.environ.items() if k not in chosen_by_user}
    env |= {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "run", "--steps", "tiny", "--epochs", "1", "--limit",
         "64", "--jobs", "1", "--quiet", "--out", str(tmp_path), "--data-dir", str(mnist_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = done.stderr.splitlines()[0]
    assert first == (
        "threads: 1 job x 1 thread (--jobs 1; OMP_NUM_THREADS=1); OMP_WAIT_POLICY=ACTIVE, as set"
    ), done.stderr
