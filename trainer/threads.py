"""How many steps train at once (``--jobs``), how many threads each computes with
(``--threads``), and how those threads wait: the policy that keeps an epoch's time when another
program takes a core.

PyTorch's CPU kernels run on OpenMP (libgomp) threads. Between two parallel regions an idle
libgomp thread spins before it sleeps (300,000 times by default), waiting for the next region;
with a core of the machine taken by another program, two threads of ours share one core, each
spinning in its time slice while the other holds the work it waits for, and an epoch of the
small steps took 2.6-8x as long as with the machine quiet (issue 28; ``bench/train_load.py``
measures it). ``GOMP_SPINCOUNT=1000`` makes a waiting thread sleep after a few microseconds;
libgomp reads it only when it loads, with ``import torch``, so ``prepare_openmp()`` runs first,
in ``trainer/__main__.py`` (this module imports no torch), and only where the user has set
neither that nor ``OMP_WAIT_POLICY``. The thread count is set after the import
(``torch.set_num_threads``).

Even so, two threads on a shared core wait for each other at every region, so the thread count
follows the cores that are free: when the run starts, ``busy_cores()`` reads how much of this
process's cores other programs used over a fifth of a second; while a step trains, its
``Governor`` looks again every second and gives up or takes back a thread. On a CPU the
trainer runs as many steps side by side as it has cores (a worker process each,
``trainer/jobs.py``), and the free cores are shared among them: with a step for every core each
computes with one thread, and a step alone gets every free core. A CUDA run trains one step at
a time (the GPU is shared) with every free core. The thread count changes the order of
floating-point sums, so a run that must repeat another to the last digit gives ``--threads``
(the reports' runs: ``--threads 1``); even then only on the same host (docs/steps.md#results).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What a user may set to choose for themselves; any of them set wins over the policy.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# bench/train_load.py (docs/performance.md), `scheduler` on 2 cores with 2 threads: quiet,
# 1,000 spins ran an epoch within 0-8 % of the default's 300,000, where OMP_WAIT_POLICY=PASSIVE
# was 28-52 % slower; with a core busy, 2.2-2.5x the quiet time against the default's 2.6-2.7x
# (9-12x at 100,000 spins). With the Governor that second holds only until its next look.
SPIN_COUNT = "1000"

_set_here: dict[str, str] = {}  # what prepare_openmp() set, to tell it from the user's own


def prepare_openmp(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Set libgomp's spin count, unless the user chose a wait; call before ``import torch``."""
    if not any(environ.get(name) for name in WAIT_VARIABLES):
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT
        _set_here["GOMP_SPINCOUNT"] = SPIN_COUNT


def cpu_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on: its CPU set (a container's, not the host's count),
    fewer where a CPU quota caps it (``docker run --cpus``, a Kubernetes CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, quota)) if quota is not None else cores


def cpu_quota(cgroup: Path) -> int | None:
    """The CPU quota of this process's cgroup in whole cores, rounded up (None: no quota):
    cgroup v2's ``cpu.max`` ("200000 100000": 2 cores) or v1's ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us``."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return -(-q // p) if q > 0 and p > 0 else None


def _jiffies(stat: Path, cores: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies of the kernel's per-CPU counters, summed over `cores`."""
    busy = total = 0
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cores:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]  # less idle and iowait
    return busy, total


def _my_cores() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return None


def busy_cores(
    seconds: float = 0.2, stat: Path = Path("/proc/stat"), cores: set[int] | None = None
) -> float:
    """How many of this process's cores other programs kept busy over the next `seconds`,
    from the kernel's per-CPU counters (0.0 where they cannot be read). Call it while this
    process itself is idle."""
    cores = _my_cores() if cores is None else cores
    if cores is None:
        return 0.0
    try:
        busy0, total0 = _jiffies(stat, cores)
        time.sleep(seconds)
        busy1, total1 = _jiffies(stat, cores)
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 <= total0:
        return 0.0
    return len(cores) * (busy1 - busy0) / (total1 - total0)


class Governor:
    """Keeps a step's thread count on the cores other programs leave free while it trains:
    ``fit()`` calls ``batch()`` after every batch (as the step's watch), and every `interval`
    seconds it compares the cores' busy time (``/proc/stat``) with this process's own CPU
    time. What is left is other programs': when they take a core, the step gives it up
    (``set_threads(n - 1)``) instead of two threads waiting for each other on one core (2.7x an
    epoch, ``bench/train_load.py``); when they leave it, the step takes it back, up to
    `ceiling`. In a ``--jobs`` run the other workers count as other programs, so the last
    step still training gets the cores the finished ones leave. A read costs about 50 us a
    second; a wrong guess costs at most `interval` seconds at the slower count."""

    def __init__(
        self,
        threads: int,
        ceiling: int,
        set_threads: Callable[[int], None],
        say: Callable[[str], None] = lambda line: None,
        interval: float = 1.0,
        stat: Path = Path("/proc/stat"),
        cores: set[int] | None = None,
        cpu_time: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threads, self.ceiling, self.set_threads, self.say = threads, ceiling, set_threads, say
        self.interval, self.stat, self.cpu_time, self.clock = interval, stat, cpu_time, clock
        self.cores = _my_cores() if cores is None else cores
        self.last = self._sample()

    def _sample(self) -> tuple[float, float, int, int] | None:
        """(wall, own CPU seconds, busy jiffies, total jiffies), None where unreadable."""
        if self.cores is None:
            return None
        try:
            busy, total = _jiffies(self.stat, self.cores)
        except (OSError, ValueError, IndexError):
            return None
        return self.clock(), self.cpu_time(), busy, total

    def others(
        self, before: tuple[float, float, int, int], now: tuple[float, float, int, int]
    ) -> float:
        """Cores other programs kept busy between two samples."""
        assert self.cores is not None
        wall, mine = now[0] - before[0], now[1] - before[1]
        busy, total = now[2] - before[2], now[3] - before[3]
        if wall <= 0 or total <= 0:
            return 0.0
        return max(len(self.cores) * busy / total - mine / wall, 0.0)

    def epoch_started(self, epoch: int, history: list[Any]) -> None:
        pass

    def epoch_ended(self, history: list[Any]) -> None:
        pass

    def batch(self, done: int, total: int) -> None:
        if self.last is None or self.clock() - self.last[0] < self.interval:
            return
        now = self._sample()
        if now is None:
            return
        others, self.last = self.others(self.last, now), now
        assert self.cores is not None
        free = len(self.cores) - min(int(others + 0.5), len(self.cores) - 1)
        wanted = max(1, min(self.ceiling, free))
        if wanted != self.threads:
            self.say(
                f"threads: {self.threads} -> {wanted} (other programs keep {others:.1f} of "
                f"{len(self.cores)} cores busy)"
            )
            self.set_threads(wanted)
            self.threads = wanted


@dataclass(frozen=True)
class Threads:
    """What ``python -m trainer run`` computes with; ``why`` is its first log line."""

    jobs: int  # steps trained at once, one process each
    threads: int  # intra-op threads of each, at the start
    why: str
    ceiling: int | None = None  # the count follows the free cores up to this (Governor); None:
    # the user's count, kept


def wait_policy(environ: Mapping[str, str]) -> str:
    """How the OpenMP threads wait, and who chose it, in words."""
    for name in WAIT_VARIABLES:
        value = environ.get(name)
        if value and _set_here.get(name) == value:
            return f"{name}={value}: a waiting thread sleeps after a few microseconds"
        if value:
            return f"{name}={value}, as set"
    return "OpenMP's default wait policy (the trainer was not started by `python -m trainer`)"


def choose(
    cores: int,
    steps: int,
    device: str,
    jobs: int | None = None,
    threads: int | None = None,
    environ: Mapping[str, str] = os.environ,
    busy: Callable[[], float] = lambda: 0.0,
) -> Threads:
    """The jobs and threads for `steps` steps on `cores` cores: ``--jobs`` and ``--threads``
    (or ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``) when given, else every core used: on a CPU as
    many jobs as cores (at most one a step), on CUDA one job; the free cores shared among them.
    `busy()` says how many cores other programs keep busy (``busy_cores``); it is asked only
    when the count is the policy's to choose, so that a given count costs no look."""
    reasons = []
    ceiling = None
    if jobs is not None:
        reasons.append(f"--jobs {jobs}")
    elif device == "cuda":
        jobs = 1
        reasons.append("one job on the GPU")
    else:
        jobs = cores
        reasons.append(f"a job per core ({cores} cores)")
    if jobs > max(steps, 1):
        reasons.append(f"{steps} step{'s' * (steps != 1)} to train")
        jobs = max(steps, 1)
    if threads is not None:
        reasons.append(f"--threads {threads}")
    else:
        name = next((n for n in THREAD_VARIABLES if _count(environ.get(n, "")) is not None), None)
        if name is not None:
            threads = _count(environ[name])
            reasons.append(f"{name}={environ[name]}")
        else:
            # bench/train_load.py (docs/performance.md), `scheduler` alone on 2 cores: quiet,
            # one thread was 35-42 % slower than two; with a core busy, two threads took
            # 8.0-8.8 s an epoch under every wait policy and one thread 4.5-5.3 s. Jobs stay a
            # core each: two jobs beside a busy core still share two cores, not one.
            taken = min(int(busy() + 0.5), cores - 1)
            threads = max(1, (cores - taken) // jobs)
            reasons.append(
                f"{cores} core{'s' * (cores != 1)} shared by {jobs} job{'s' * (jobs != 1)}"
                + (f", {taken} of them busy with other programs" if taken else "")
            )
            ceiling = cores
    assert threads is not None
    per = f"{jobs} job{'s' * (jobs != 1)} x {threads} thread{'s' * (threads != 1)}"
    why = f"{per} ({'; '.join(reasons)}); {wait_policy(environ)}"
    return Threads(jobs, threads, why, ceiling if device == "cpu" else None)


def _count(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None
