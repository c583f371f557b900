"""The thread policy: how many steps train at once and with how many threads, who chose it, and
the OpenMP wait policy set before torch loads unless the user set one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainer import threads


@pytest.mark.parametrize(
    ("cores", "steps", "device", "jobs", "count", "environ", "expected", "why"),
    [
        # Cores another program keeps busy at the start are left to it (issue 28).
        (2, 1, "cpu", None, None, {"busy": "1.0"}, (1, 1), "1 of them busy with other"),
        (2, 1, "cpu", None, None, {"busy": "0.3"}, (1, 2), "2 cores shared by 1 job)"),
        (2, 1, "cpu", None, None, {"busy": "2.0"}, (1, 1), "1 of them busy"),  # one is ours
        (16, 1, "cpu", None, None, {"busy": "3.6"}, (1, 12), "4 of them busy"),
        (2, 8, "cpu", None, None, {"busy": "1.0"}, (2, 1), "a job per core (2 cores)"),
        (16, 8, "cuda", None, None, {"busy": "2.0"}, (1, 14), "2 of them busy"),
        (2, 1, "cpu", None, 2, {"busy": "1.0"}, (1, 2), "--threads 2"),  # the user's word wins
        # On a CPU: a job per core, the cores shared among the jobs.
        (2, 8, "cpu", None, None, {}, (2, 1), "a job per core (2 cores)"),
        (8, 8, "cpu", None, None, {}, (8, 1), "a job per core (8 cores)"),
        # Fewer steps than cores: a job per step, each with its share of the cores.
        (2, 1, "cpu", None, None, {}, (1, 2), "1 step to train"),
        (16, 3, "cpu", None, None, {}, (3, 5), "16 cores shared by 3 jobs"),
        (1, 8, "cpu", None, None, {}, (1, 1), "a job per core (1 cores)"),
        # CUDA: one job, the GPU is shared.
        (16, 8, "cuda", None, None, {}, (1, 16), "one job on the GPU"),
        # The user's word wins: --jobs, --threads, then the usual variables.
        (2, 8, "cpu", 1, None, {}, (1, 2), "--jobs 1"),
        (4, 8, "cpu", 3, None, {}, (3, 1), "4 cores shared by 3 jobs"),
        (2, 8, "cpu", 1, 1, {}, (1, 1), "--threads 1"),
        (2, 8, "cpu", 1, None, {"OMP_NUM_THREADS": "1"}, (1, 1), "OMP_NUM_THREADS=1"),
        (4, 8, "cpu", None, None, {"MKL_NUM_THREADS": "3"}, (4, 3), "MKL_NUM_THREADS=3"),
        (2, 8, "cpu", 1, 4, {"OMP_NUM_THREADS": "1"}, (1, 4), "--threads 4"),
        # A variable that is no count is not a choice.
        (2, 1, "cpu", None, None, {"OMP_NUM_THREADS": "many"}, (1, 2), "2 cores shared by 1 job"),
        (2, 1, "cpu", None, None, {"OMP_NUM_THREADS": "0"}, (1, 2), "2 cores shared by 1 job"),
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
    busy = float(environ.pop("busy", "0"))  # measured by busy_cores(), here a case's
    looked: list[float] = []

    def look() -> float:
        looked.append(busy)
        return busy

    choice = threads.choose(cores, steps, device, jobs, count, environ, busy=look)
    assert (choice.jobs, choice.threads) == expected
    assert why in choice.why
    assert choice.why.startswith(f"{expected[0]} job")
    # The cores are looked at once, and only when the count is the policy's to choose.
    given = count is not None or any(v.isdigit() and int(v) >= 1 for v in environ.values())
    assert looked == ([] if given else [busy])


@pytest.mark.parametrize(
    ("environ", "after"),
    [
        ({}, "1000"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, None),  # a wait policy is the user's choice of wait
        ({"GOMP_SPINCOUNT": "300000"}, "300000"),  # the user's own stays
    ],
)
def test_wait_policy_only_where_the_user_set_none(
    environ: dict[str, str], after: str | None
) -> None:
    env = dict(environ)
    threads.prepare_openmp(env)
    assert env.get("GOMP_SPINCOUNT") == after
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


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # docker run --cpus 2 (cgroup v2)
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 cores: two threads, rounded up
        ({"cpu.max": "50000 100000\n"}, 1),  # half a core: still one thread
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1
        ({"cpu.max": "garbage"}, None),  # unreadable: as if none
        ({}, None),  # no cgroup files (not Linux, or not mounted)
    ],
)
def test_a_cpu_quota_caps_the_cores(
    tmp_path: Path, files: dict[str, str], quota: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads.cpu_quota(tmp_path) == quota
    affinity = threads.cpu_cores(tmp_path / "nowhere")  # the CPU set alone
    assert threads.cpu_cores(tmp_path) == (min(affinity, quota) if quota else affinity)


def _stat(busy: list[int], idle: list[int]) -> str:
    """/proc/stat's first lines: a total, then a line per CPU (user ... steal; iowait 5)."""
    lines = [f"cpu  {sum(busy)} 0 0 {sum(idle)} 0 0 0 0 0 0"]
    lines += [
        f"cpu{i} {b} 0 0 {d} 5 0 0 0 0 0" for i, (b, d) in enumerate(zip(busy, idle, strict=True))
    ]
    return "\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n"


@pytest.mark.parametrize(
    ("before", "after", "mine", "expected"),
    [
        # (busy, idle) jiffies of each CPU before and after; `mine`: this process's CPUs.
        (([0, 0], [0, 0]), ([100, 0], [0, 100]), {0, 1}, 1.0),  # one core spinning
        (([0, 0], [0, 0]), ([0, 0], [100, 100]), {0, 1}, 0.0),  # quiet
        (([0, 0], [0, 0]), ([100, 100], [0, 0]), {0, 1}, 2.0),  # both taken
        (([0, 0], [0, 0]), ([50, 100], [50, 0]), {0}, 0.5),  # only CPU 0 is ours
        (([0, 0, 0], [0, 0, 0]), ([100, 0, 0], [0, 100, 100]), {1, 2}, 0.0),  # CPU 0 isn't
        (([0, 0], [0, 0]), ([0, 0], [0, 0]), {0, 1}, 0.0),  # no time passed: as if quiet
    ],
)
def test_busy_cores_reads_the_kernels_counters(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: tuple[list[int], list[int]],
    after: tuple[list[int], list[int]],
    mine: set[int],
    expected: float,
) -> None:
    stat = tmp_path / "stat"
    stat.write_text(_stat(*before))

    def later(_: float) -> None:  # the probe's sleep: the counters move meanwhile
        stat.write_text(_stat(*after))

    monkeypatch.setattr(threads.time, "sleep", later)
    assert threads.busy_cores(0.2, stat, mine) == pytest.approx(expected)


def test_busy_cores_without_counters_is_zero(tmp_path: Path) -> None:
    assert threads.busy_cores(0.0, tmp_path / "nowhere", {0}) == 0.0
    (tmp_path / "stat").write_text("cpu0 not numbers\n")
    assert threads.busy_cores(0.0, tmp_path / "stat", {0}) == 0.0


def test_busy_cores_sees_a_spinning_process() -> None:
    """The real counters: a child spinning on one of our cores is counted (other programs may
    keep the rest busy too, so at least most of one core, at most all of ours)."""
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat (not Linux)")
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        busy = threads.busy_cores(0.5)
    finally:
        child.kill()
        child.wait()
    assert 0.6 < busy <= len(os.sched_getaffinity(0)) + 0.01, busy


@pytest.mark.parametrize(
    ("cores", "count", "ceiling", "after", "mine", "seconds", "expected"),
    [
        # (busy, idle) jiffies of each CPU one second (100 jiffies) on; `mine`: our CPU seconds.
        (2, 2, 2, ([100, 100], [0, 0]), 2.0, 1.0, 2),  # quiet: the two busy cores are ours
        (2, 2, 2, ([100, 100], [0, 0]), 1.3, 1.0, 1),  # another program took 0.7 of a core
        (2, 2, 2, ([100, 70], [0, 30]), 1.3, 1.0, 2),  # ...0.4 of one: not a core, kept
        (2, 1, 2, ([100, 0], [0, 100]), 1.0, 1.0, 2),  # it left: the core is taken back
        (2, 1, 2, ([100, 100], [0, 0]), 1.0, 1.0, 1),  # it stays: so do we
        (2, 1, 1, ([100, 0], [0, 100]), 1.0, 1.0, 1),  # never beyond the ceiling
        (2, 2, 2, ([100, 100], [0, 0]), 0.0, 1.0, 1),  # both taken: one thread, never none
        (2, 2, 2, ([100, 100], [0, 0]), 1.0, 0.5, 2),  # within the interval: not looked at
        (4, 2, 4, ([100] * 4, [0] * 4), 2.0, 1.0, 2),  # a --jobs worker beside another
        (4, 2, 4, ([100, 100, 0, 0], [0, 0, 100, 100]), 2.0, 1.0, 4),  # the other one ended
    ],
)
def test_the_governor_follows_the_free_cores(
    tmp_path: Path,
    cores: int,
    count: int,
    ceiling: int,
    after: tuple[list[int], list[int]],
    mine: float,
    seconds: float,
    expected: int,
) -> None:
    stat = tmp_path / "stat"
    stat.write_text(_stat([0] * cores, [0] * cores))
    now = {"clock": 0.0, "cpu": 0.0}
    said: list[str] = []
    set_to: list[int] = []
    governor = threads.Governor(
        count, ceiling, set_to.append, said.append, stat=stat, cores=set(range(cores)),
        cpu_time=lambda: now["cpu"], clock=lambda: now["clock"],
    )  # fmt: skip
    stat.write_text(_stat(*after))
    now.update(clock=seconds, cpu=mine)
    governor.batch(1, 10)
    assert governor.threads == expected
    assert set_to == ([] if expected == count else [expected])
    assert len(said) == len(set_to)
    if said:
        assert said[0].startswith(f"threads: {count} -> {expected} (other programs keep ")


def test_the_governor_without_counters_leaves_the_count(tmp_path: Path) -> None:
    set_to: list[int] = []
    governor = threads.Governor(2, 2, set_to.append, stat=tmp_path / "nowhere", cores={0, 1})
    governor.batch(1, 10)
    assert governor.threads == 2 and set_to == []


def test_the_governor_gives_a_core_to_a_real_spinning_process() -> None:
    """The real counters and CPU clock: with a child spinning beside two busy threads of this
    process, the governor gives up a core within its interval."""
    if not Path("/proc/stat").exists() or len(os.sched_getaffinity(0)) != 2:
        pytest.skip("needs /proc/stat and 2 cores")
    set_to: list[int] = []
    governor = threads.Governor(2, 2, set_to.append, interval=0.5)
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:  # one thread of ours busy: 1 + 1 cores taken
            governor.batch(1, 10)
    finally:
        child.kill()
        child.wait()
    assert set_to[:1] == [1], set_to
