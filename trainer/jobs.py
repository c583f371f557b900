"""``python -m trainer run --jobs N``: N worker processes share the run's steps.

Each worker is an ordinary ``python -m trainer run --steps a,b,c --threads T --as-job --claims
DIR ...`` (the same command a user could type, so nothing here trains). The workers go through
the steps in the order given (the longest first: the run ends soonest) and each takes the next
step no other worker has taken, by creating its claim file in DIR (``O_EXCL``: exactly one
creator wins). A worker pays for importing torch, reading MNIST and the exporter's first use
once, not once a step: 15-25 s of CPU each on a 2-core machine, which eight processes a run
paid before (``bench/train_load.py`` part 2). They all publish into the one volume: its writer
lock serialises the publishing, and each step's checkpoints and progress file are its own.

Every line a worker prints is forwarded prefixed by the step it is training (known from the
step's heading line, ``== N. slug``), so that each step's epochs read as one line each. A
worker dies with this process (Linux: PR_SET_PDEATHSIG); on Ctrl-C or SIGTERM every worker is
stopped and marks its progress file ``stopped``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO, TypeVar

STOP_WAIT_SECONDS = 30.0  # a stopped worker has this long to mark its progress before SIGKILL

T = TypeVar("T")


def heading(number: int, slug: str) -> str:
    """The line that starts a step's output, in one process or in a worker."""
    return f"== {number}. {slug}"


HEADING = re.compile(r"== \d+\. ([a-z0-9_-]+)\b")


def claim(claims: Path, step: str) -> bool:
    """Take `step` for this worker, unless another worker of the run took it first."""
    try:
        os.close(os.open(claims / step, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def claimed(items: Iterable[T], claims: Path, step: Callable[[T], str]) -> Iterator[T]:
    """The items whose step this worker claims, each claimed only when it is reached: a worker
    asks for its next step when it has finished the last."""
    return (item for item in items if claim(claims, step(item)))


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _forward(
    process: subprocess.Popen[str],
    name: str,
    width: int,
    out: TextIO,
    lock: threading.Lock,
    on_start: Callable[[str], None] | None,
) -> None:
    assert process.stdout is not None
    prefix = name
    for line in process.stdout:
        match = HEADING.match(line)
        if match:
            prefix = match.group(1)
            if on_start is not None:
                on_start(prefix)
        with lock:
            out.write(f"{prefix:<{width}} | {line.rstrip()}\n")
            out.flush()


def run_workers(
    argv: list[str],
    jobs: int,
    steps: Sequence[str],
    out: TextIO = sys.stderr,
    on_start: Callable[[str], None] | None = None,
    while_running: Callable[[], None] = lambda: None,
) -> list[int]:
    """Run `jobs` copies of the worker command `argv` at once; forward every line prefixed by
    the step it concerns (``job N`` before a worker's first step); return each one's exit
    status. `on_start(step)` hears of each step a worker starts; `while_running()` is called
    every tenth of a second until they have all exited."""
    names = [f"job {n + 1}" for n in range(jobs)]
    width = max(len(x) for x in [*steps, *names])
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    lock = threading.Lock()
    running: list[tuple[subprocess.Popen[str], threading.Thread]] = []
    try:
        for name in names:
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
            reader = threading.Thread(
                target=_forward, args=(process, name, width, out, lock, on_start), daemon=True
            )
            reader.start()
            running.append((process, reader))
        while any(process.poll() is None for process, _ in running):
            while_running()
            time.sleep(0.1)
        for _, reader in running:
            reader.join()
    except BaseException:
        _stop(running)
        raise
    return [process.returncode for process, _ in running]


def _stop(running: list[tuple[subprocess.Popen[str], threading.Thread]]) -> None:
    """SIGTERM to every running worker (each marks its progress stopped), SIGKILL if it
    lingers."""
    for process, _ in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    for process, reader in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
