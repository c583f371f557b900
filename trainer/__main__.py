import signal
import sys

from trainer.threads import prepare_openmp

# Before torch is imported (trainer.cli imports it): libgomp reads its settings once, on load.
prepare_openmp()

from trainer.cli import main  # noqa: E402


def _stopped(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `docker stop`, a --jobs parent: stop as Ctrl-C does


signal.signal(signal.SIGTERM, _stopped)
sys.exit(main())
