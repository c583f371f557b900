"""``python -m trainer run --jobs N``: N steps trained at once, one process each.

Each step is an ordinary ``python -m trainer run --steps STEP --threads T --as-job ...`` (the
same command a user could type, so nothing here trains), started as a job comes free, in the
order given (the longest first: the run ends soonest). They all publish into the one volume:
its writer lock serialises the publishing, and each step's checkpoints and progress file are
its own. Every line a job prints is forwarded prefixed by its step, so that its epochs read as
one line each. A job dies with this process (Linux: PR_SET_PDEATHSIG); on Ctrl-C or SIGTERM
every running job is stopped and marks its progress file ``stopped``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

STOP_WAIT_SECONDS = 30.0  # a stopped job has this long to mark its progress before SIGKILL


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _forward(
    process: subprocess.Popen[str], prefix: str, out: TextIO, lock: threading.Lock
) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        with lock:
            out.write(f"{prefix}{line.rstrip()}\n")
            out.flush()


def run_jobs(
    commands: Sequence[tuple[str, list[str]]],
    jobs: int,
    out: TextIO = sys.stderr,
    on_start: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Run `commands` ((step, argv) each), `jobs` at a time in the order given; forward every
    line prefixed by its step; return each step's exit status. `on_start(step)` hears of each
    start."""
    width = max((len(step) for step, _ in commands), default=0)
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    lock = threading.Lock()
    queue = list(commands)
    running: dict[str, tuple[subprocess.Popen[str], threading.Thread]] = {}
    codes: dict[str, int] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                step, argv = queue.pop(0)
                if on_start is not None:
                    on_start(step)
                process = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                    preexec_fn=_die_with_parent,
                )  # fmt: skip
                reader = threading.Thread(
                    target=_forward, args=(process, f"{step:<{width}} | ", out, lock), daemon=True
                )
                reader.start()
                running[step] = (process, reader)
            for step, (process, reader) in list(running.items()):
                if process.poll() is not None:
                    reader.join()
                    codes[step] = process.returncode
                    del running[step]
            time.sleep(0.1)
    except BaseException:
        _stop(running)
        raise
    return codes


def _stop(running: dict[str, tuple[subprocess.Popen[str], threading.Thread]]) -> None:
    """SIGTERM to every running job (each marks its progress stopped), SIGKILL if it lingers."""
    for process, _ in running.values():
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    for process, reader in running.values():
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
