"""Steps side by side (``--jobs``: workers that claim steps in turn) into one volume, and
resuming by default through the Makefile's own command lines."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from io import StringIO
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainer.cli import build_parser, parse_steps, step_command, worker_command
from trainer.jobs import run_workers
from trainer.plan import ESTIMATES, longest_first, read_estimates, share_estimates
from trainer.progress import EpochEstimate, Planned
from trainer.threads import Threads
from volume import read_index, read_version
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
    # The plan, timed by the jobs between them, before any step trains.
    for step in STEPS:
        assert any(re.fullmatch(rf"  {step}\s+1 epoch  ~.+ an epoch", x) for x in lines), lines
    assert lines.index(next(x for x in lines if x.startswith("estimate from the first"))) < min(
        n for n, x in enumerate(lines) if " | == " in x
    ), lines
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
    for step in STEPS:  # each records the command that trains it alone, not its worker's
        command = read_version(tmp_path, step, index.steps[step]).metrics.provenance.command
        assert f"--steps {step} " in command and "--claims" not in command, command
        assert "--as-job" not in command and "--ceiling" not in command, command
    progress = read_progress(tmp_path)
    assert {s: p.state for s, p in progress.items()} == dict.fromkeys(STEPS, "published")
    assert {s: p.version for s, p in progress.items()} == {s: index.steps[s].version for s in STEPS}
    assert lines[-1].startswith("done: 3/3 steps published in "), lines[-1]


# A stand-in worker: takes the steps of argv[1] in order through the trainer's own claims in
# argv[2], prints each one's heading and a line, and exits with argv[3] after its first step.
FAKE_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from trainer.jobs import claimed, heading
    print("worker up")
    for n, step in enumerate(claimed(sys.argv[1].split(","), Path(sys.argv[2]), str)):
        print(heading(n + 1, step) + ": 10 params")
        time.sleep(0.05)
        print(f"published {step}")
        if sys.argv[3] != "0":
            sys.exit(int(sys.argv[3]))
""")


@pytest.mark.parametrize(
    ("steps", "jobs", "status", "trained"),
    [
        (["a", "b", "c", "d", "e"], 2, 0, 5),  # more steps than workers: each takes several
        (["a"], 3, 0, 1),  # more workers than steps: the idle ones exit at once, 0
        (["a", "b", "c", "d", "e"], 2, 3, 2),  # a failing worker stops after its first step
    ],
)
def test_workers_take_each_step_once_and_prefix_its_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[str], jobs: int, status: int,
    trained: int,
) -> None:  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    argv = [sys.executable, "-c", FAKE_WORKER, ",".join(steps), str(tmp_path), str(status)]
    out = StringIO()
    started: list[str] = []
    codes = run_workers(argv, jobs, steps, out=out, on_start=started.append)
    lines = out.getvalue().splitlines()
    assert len(started) == len(set(started)) == trained, started
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(started)
    for step in started:  # its heading and what follows carry the step's name
        assert any(x.startswith(f"{step:<5} | == ") for x in lines), lines
        assert f"{step:<5} | published {step}" in lines, lines
    assert sorted(x for x in lines if x.endswith(" | worker up")) == [
        f"job {n + 1} | worker up" for n in range(jobs)
    ]
    assert codes == [status] * jobs


def test_workers_take_the_steps_in_the_order_given() -> None:
    assert parse_steps("skeleton,tiny,setup", as_given=True) == ["skeleton", "tiny", "setup"]
    assert parse_steps("skeleton,tiny,setup") == ["setup", "skeleton", "tiny"]


def test_claims_race_between_processes(tmp_path: Path) -> None:
    """Four processes claim the same 40 names at once: each name goes to exactly one."""
    names = [f"s{n}" for n in range(40)]
    code = (
        "import sys; from pathlib import Path; from trainer.jobs import claimed; "
        "print(' '.join(claimed(sys.argv[1].split(','), Path(sys.argv[2]), str)))"
    )
    env = trainer_env()
    racers = [
        subprocess.Popen([sys.executable, "-c", code, ",".join(names), str(tmp_path)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    won = [name for racer in racers for name in racer.communicate(timeout=60)[0].split()]
    assert sorted(won) == sorted(names)


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


def test_workers_time_each_step_once_and_all_see_every_estimate(tmp_path: Path) -> None:
    """Four workers share the plan's timing (threads here: the claims are files either way)."""
    steps = [f"s{n}" for n in range(12)]
    timed: list[str] = []
    seen: list[dict[str, EpochEstimate]] = []

    def probe(step: str) -> EpochEstimate:
        timed.append(step)
        time.sleep(0.01)
        return EpochEstimate(float(steps.index(step)), 0.5)

    def worker() -> None:
        seen.append(share_estimates(steps, tmp_path, probe, poll=0.01))

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert sorted(timed) == sorted(steps)  # each timed once
    expected = {s: EpochEstimate(float(n), 0.5) for n, s in enumerate(steps)}
    assert seen == [expected] * 4
    assert read_estimates(tmp_path, steps) == expected
    # The order the workers take them in: the longest first.
    plan = [Planned(s, 2, 0, expected[s].seconds) for s in steps]
    assert [p.step for p in longest_first(plan)] == steps[::-1]


def test_a_step_whose_timer_stopped_is_timed_by_another(tmp_path: Path) -> None:
    (tmp_path / ESTIMATES).mkdir()
    (tmp_path / ESTIMATES / "a.claim").touch()  # claimed by a worker that then died
    (tmp_path / ESTIMATES / "b.json").write_text('{"train_seconds": 3.0, "test_seconds": 1')
    timed: list[str] = []

    def probe(step: str) -> EpochEstimate:
        timed.append(step)
        return EpochEstimate(1.0, 0.0)

    assert read_estimates(tmp_path, ["a", "b"]) == {}  # half a file is no estimate
    found = share_estimates(["a", "b"], tmp_path, probe, poll=0.01, stopped_after=0.2)
    assert timed == ["b", "a"]  # b was never claimed; a only after the wait
    assert found == {"a": EpochEstimate(1.0, 0.0), "b": EpochEstimate(1.0, 0.0)}


@pytest.mark.parametrize(("ceiling", "given"), [(2, ["--ceiling", "2"]), (None, [])])
def test_a_workers_command_and_what_each_step_records(
    tmp_path: Path, ceiling: int | None, given: list[str]
) -> None:
    """A worker is told its threads, and may follow the free cores up to the ceiling only where
    the policy chose the count; the command a step records trains it alone, as given."""
    args = build_parser().parse_args(["run", "--steps", "gap,tiny", "--epochs", "2", "--resume"])
    choice = Threads(2, 1, "why", ceiling)
    argv = worker_command(args, ["tiny", "gap"], choice, tmp_path)
    assert argv[:3] == [sys.executable, "-m", "trainer"]
    assert argv[argv.index("--threads") + 1] == "1"
    assert [a for a in argv if a == "--ceiling"] == given[:1]
    if given:
        assert argv[argv.index("--ceiling") + 1] == given[1]
    command = step_command(argv[3:], "gap")
    assert command.startswith("python -m trainer run --steps gap --jobs 1 --threads 1 ")
    for hidden in ("--as-job", "--claims", "--ceiling", str(tmp_path)):
        assert hidden not in command, command
    assert "--epochs 2" in command and "--resume" in command, command
