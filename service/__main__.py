"""`python -m service`: the service on every core, the way the service image runs it.

    python -m service [--host 127.0.0.1] [--port 8000] [--workers N]
                      [--timeout-graceful-shutdown SECONDS] [--timeout-keep-alive 5]
                      [--backlog 2048] [--log-level info]

Each worker is uvicorn with the limits of `service/server.py` (deadlines for slow clients'
headers, a cap on a request head's size and on connections); the app adds its own
(`service/limits.py`: body deadline, requests in flight). MAX_CONNECTIONS and MAX_REQUESTS are
per worker.

One uvicorn process answers on one core: its event loop runs each 28x28 prediction in Python
(under the GIL) from the request's first byte to its last, so a second core would only help
photos, whose decoding releases the GIL. This starts uvicorn serving `service.app:app` --workers times
(default: $WEB_CONCURRENCY, else the cores this process may use, capped by a cgroup CPU
quota), each on its own listening socket bound to the same port with SO_REUSEPORT: the kernel
spreads new connections over the sockets by a hash of their addresses. (uvicorn's own
--workers share one socket, and whichever process wakes first accepts a whole burst of new
connections, so on this project's 2-core machine the second worker mostly idled:
bench/README.md.) With one worker it is that uvicorn in this process, on host:port.

What a worker costs: its memory (every step's model, its own Python: about 100 MB), its own
poll of the model volume, and Prometheus counters kept in files (prometheus_client's
multiprocess mode, in a temporary folder) so that `/metrics` adds up every worker's; the
per-process series (CPU, memory, open files) are not reported then. What it saves: on 2 cores,
a second process for the small requests a single event loop answers one at a time
(`python bench/peers.py`: requests per second on the 28x28 PNG at 32 clients).

SIGTERM or SIGINT stops every worker gracefully (each with uvicorn's own shutdown, e.g. the
image's --timeout-graceful-shutdown 20); if one worker exits on its own, the others are
stopped and this exits with its status, for the orchestrator to restart the whole.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket bound to host:port that other processes may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog, reuse_port=True)


def serve_worker(fd: int, options: argparse.Namespace) -> None:
    """One worker: uvicorn on the listening socket `fd` its launcher bound for it."""
    import uvicorn

    from service.server import config

    sock = socket.socket(fileno=fd)  # the family it was bound with (uvicorn's --fd says AF_UNIX)
    uvicorn.Server(config(options)).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    from service import server
    from service.settings import cpu_count

    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n")[0])
    server.add_arguments(parser)
    default_workers = int(os.environ.get("WEB_CONCURRENCY") or 0) or cpu_count()
    parser.add_argument("--workers", type=int, default=default_workers)
    parser.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # a worker, started here
    args = parser.parse_args(argv)
    if args.worker_fd is not None:
        serve_worker(args.worker_fd, args)
        return 0
    if args.workers <= 1:  # one uvicorn, in this process
        import uvicorn

        uvicorn.Server(server.config(args)).run()
        return 0
    server.settings()  # a bad setting fails here, once, before any worker starts
    options = ["--log-level", args.log_level, "--timeout-keep-alive", str(args.timeout_keep_alive)]
    if args.timeout_graceful_shutdown is not None:
        options += ["--timeout-graceful-shutdown", str(args.timeout_graceful_shutdown)]

    metrics = tempfile.mkdtemp(prefix="mnist-steps-metrics-")
    # Each worker knows how many share the cores (settings.cores_per_worker).
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": metrics, "WEB_CONCURRENCY": str(args.workers)}
    workers: list[subprocess.Popen[bytes]] = []
    signals: list[int] = []  # the signal that stopped us, if one did

    def stop_workers() -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        stop_workers()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = 0
    try:
        for _ in range(args.workers):
            # Each worker holds the only copy of its socket: were one to die, the kernel must
            # stop sending it connections, which it does once no process holds the socket.
            with listening_socket(args.host, args.port, args.backlog) as sock:
                fd = sock.fileno()
                command = [sys.executable, "-m", "service", "--worker-fd", str(fd), *options]
                # A process group of its own: dumb-init (and a terminal's Ctrl-C) signal this
                # process's group, and a worker signalled twice would stop at once, not
                # gracefully; the signal reaches it once, from here.
                workers.append(subprocess.Popen(command, pass_fds=[fd], env=env, process_group=0))
        _, wait_status = os.wait()  # the first worker to end: on our signal, or on its own
        if not signals:  # on its own: the service is broken; stop, and say how it ended
            code = os.waitstatus_to_exitcode(wait_status)
            status = 128 - code if code < 0 else code or 1
    finally:
        stop_workers()
        for worker in workers:
            worker.wait()
        shutil.rmtree(metrics, ignore_errors=True)
    if signals:  # as uvicorn does: end by the signal that stopped us
        signal.signal(signals[0], signal.SIG_DFL)
        os.kill(os.getpid(), signals[0])
    return status


if __name__ == "__main__":
    sys.exit(main())
