"""How many steps train at once (``--jobs``), how many threads each computes with
(``--threads``), and how those threads wait: the policy that keeps an epoch's time when another
program takes a core.

PyTorch's CPU kernels run on OpenMP (libgomp) threads. Between two parallel regions an idle
libgomp thread spins for a while before it sleeps, waiting for the next region; with a core of
the machine taken by another program, two threads of ours share one core, each spinning in its
time slice while the other holds the work it waits for, and an epoch of the small steps took
2.6-8x as long as with the machine quiet (issue 28; ``bench/train_load.py`` measures it).
``OMP_WAIT_POLICY=PASSIVE`` makes a waiting thread sleep at once; libgomp reads it only when it
loads, with ``import torch``, so ``prepare_openmp()`` runs first, in ``trainer/__main__.py``
(this module imports no torch), and only where the user has set neither that nor
``GOMP_SPINCOUNT``. The thread count is set after the import (``torch.set_num_threads``).

On a CPU the trainer runs as many steps side by side as it has cores (one process each, one
thread each): every core is used, and threads of one process never wait for each other on a
shared core. A CUDA run trains one step at a time (the GPU is shared).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# What a user may set to choose for themselves; any of them set wins over the policy.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
WAIT_POLICY = "PASSIVE"  # bench/train_load.py: the spinning default collapses with a busy core

_set_here: dict[str, str] = {}  # what prepare_openmp() set, to tell it from the user's own


def prepare_openmp(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Set the OpenMP wait policy, unless the user set one; call before ``import torch``."""
    if not any(environ.get(name) for name in WAIT_VARIABLES):
        environ["OMP_WAIT_POLICY"] = WAIT_POLICY
        _set_here["OMP_WAIT_POLICY"] = WAIT_POLICY


def cpu_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Threads:
    """What ``python -m trainer run`` computes with; ``why`` is its first log line."""

    jobs: int  # steps trained at once, one process each
    threads: int  # intra-op threads of each
    why: str


def wait_policy(environ: Mapping[str, str]) -> str:
    """How the OpenMP threads wait, and who chose it, in words."""
    for name in WAIT_VARIABLES:
        value = environ.get(name)
        if value and _set_here.get(name) == value:
            return f"{name}={value}: a waiting thread sleeps instead of spinning on a shared core"
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
) -> Threads:
    """The jobs and threads for `steps` steps on `cores` cores: ``--jobs`` and ``--threads``
    (or ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``) when given, else every core used: on a CPU as
    many jobs as cores (at most one a step), one thread each; on CUDA one job with the cores."""
    reasons = []
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
        elif device == "cuda":
            threads = max(1, cores // jobs)
            reasons.append(f"{cores} cores shared by {jobs} job{'s' * (jobs != 1)}")
        else:
            # bench/train_load.py, `scheduler` and `skeleton` with one core kept busy: one
            # thread a job held (2.41x and 0.65x its quiet time), two passive threads did not
            # (4.70x and 1.08x), for 10-28 % more time on a quiet machine. The other cores go to
            # the other jobs.
            threads = 1
            reasons.append("one thread a job: it holds when another program takes a core")
    assert threads is not None
    per = f"{jobs} job{'s' * (jobs != 1)} x {threads} thread{'s' * (threads != 1)}"
    return Threads(jobs, threads, f"{per} ({'; '.join(reasons)}); {wait_policy(environ)}")


def _count(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None
