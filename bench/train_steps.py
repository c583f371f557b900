"""Training time of every step on the training device, and the final step's time to 99.4 %.

    python bench/train_steps.py [--steps all] [--device auto] [--epochs N] [--limit N]
                                [--target 99.4] [--data-dir DIR] [--keep DIR]

It runs the real trainer, `python -m trainer run`, with each step's own recipe into a temporary
volume (on a GPU the whole of MNIST is held on the GPU and augmented there, as the trainer
always does; --keep DIR keeps it as DIR/device, and the baseline's as DIR/cpu), then reads the
per-epoch times the trainer recorded in each step's metrics (each epoch: training plus testing,
timed after the device has finished). It prints, per step, the first epoch's seconds (CUDA and
cuDNN warm up in it), the median of the other epochs, training images per second over the whole
epoch, and the best test accuracy; then the seconds the final step takes to first reach --target
test accuracy, summed over its epochs up to that one.

Baseline, in the same run: one epoch of the final step on the CPU (the same trainer, recipe and
images). The last line is `ratio: X.XX`, the CPU's seconds per epoch of the final step over the
device's (on a machine without a GPU both are the CPU, and the ratio is about 1).

On this project's 2-core CPU, `--steps scheduler` (the final step alone) takes 11 minutes; use
--limit and --epochs for a quick look, and a GPU for every step (one H200: about 5 minutes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

from trainer.cli import parse_steps  # noqa: E402
from volume import STEP_SLUGS, Metrics, read_current  # noqa: E402

MNIST_TRAIN_IMAGES = 60_000


def train(
    out: Path, steps: str, device: str, data_dir: Path, epochs: int | None, limit: int | None
) -> None:
    """`python -m trainer run` into `out`; its epoch lines go to this script's stderr."""
    command = [sys.executable, "-m", "trainer", "run", "--steps", steps, "--device", device]
    command += ["--data-dir", str(data_dir), "--out", str(out)]
    command += ["--epochs", str(epochs)] if epochs is not None else []
    command += ["--limit", str(limit)] if limit is not None else []
    print(f"$ {' '.join(command[1:])}", file=sys.stderr, flush=True)
    subprocess.run(command, cwd=ROOT, check=True, stdout=sys.stderr)


def published_metrics(volume: Path, steps: list[str]) -> dict[str, Metrics]:
    """The current metrics of `steps` in `volume`, in the design's order. Only the steps this
    run trained: a --keep folder may hold other steps from an earlier run."""
    versions = {slug: read_current(volume, slug) for slug in STEP_SLUGS if slug in steps}
    return {slug: version.metrics for slug, version in versions.items() if version is not None}


def steady_seconds(metrics: Metrics) -> float:
    """Seconds per epoch without the first (which warms up CUDA, cuDNN and the caches)."""
    seconds = [e.seconds for e in metrics.epochs]
    return statistics.median(seconds[1:] or seconds)


def time_to(metrics: Metrics, target: float) -> tuple[int, float] | None:
    """(epoch, seconds of training and testing until then) when test accuracy first reached
    `target`, or None."""
    elapsed = 0.0
    for epoch in metrics.epochs:
        elapsed += epoch.seconds
        if epoch.test_accuracy >= target:
            return epoch.epoch, elapsed
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    default_data = os.environ.get("MNIST_DIR", "../shared/datasets/mnist")
    parser.add_argument("--data-dir", type=Path, default=Path(default_data))
    parser.add_argument(
        "--steps", default="all", help="all, or slugs/numbers; the final step is always timed"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs")
    parser.add_argument("--limit", type=int, help="train and test on the first N images only")
    parser.add_argument("--target", type=float, default=99.4, help="test accuracy, percent")
    parser.add_argument(
        "--keep", type=Path, help="keep the volumes in DIR/device and DIR/cpu (default: delete)"
    )
    args = parser.parse_args()
    final = STEP_SLUGS[-1]
    steps = list(dict.fromkeys([*parse_steps(args.steps), final]))  # the baseline's step too

    with tempfile.TemporaryDirectory(prefix="train-steps-") as tmp:
        folder = args.keep or Path(tmp)
        ours, baseline = folder / "device", folder / "cpu"
        train(ours, ",".join(steps), args.device, args.data_dir, args.epochs, args.limit)
        train(baseline, final, "cpu", args.data_dir, 1, args.limit)
        runs, cpu = published_metrics(ours, steps), published_metrics(baseline, [final])[final]

    images = min(args.limit or MNIST_TRAIN_IMAGES, MNIST_TRAIN_IMAGES)  # --limit past the end
    devices = sorted({m.provenance.device for m in runs.values()})
    print(f"device: {', '.join(devices)}; {images:,} training images per epoch")
    print()
    print(
        "| # | step | params | epochs | first epoch s | s/epoch after | train images/s | best test % |"
    )
    print("|--:|---|--:|--:|--:|--:|--:|--:|")
    for slug, m in runs.items():
        steady = steady_seconds(m)
        print(
            f"| {m.number} | `{slug}` | {m.params:,} | {len(m.epochs)} | {m.epochs[0].seconds:.1f} "
            f"| {steady:.1f} | {images / steady:,.0f} | {m.best_test_accuracy:.2f} |"
        )
    print()
    reached = time_to(runs[final], args.target)
    if reached is None:
        print(
            f"`{final}` did not reach {args.target} % in {len(runs[final].epochs)} epochs "
            f"(best {runs[final].best_test_accuracy:.2f} %)"
        )
    else:
        epoch, seconds = reached
        print(f"`{final}` reached {args.target} % test accuracy at epoch {epoch}: {seconds:.1f} s")
    cpu_seconds = cpu.epochs[0].seconds
    print(f"baseline: one epoch of `{final}` on {cpu.provenance.device}: {cpu_seconds:.1f} s")
    print(f"ratio: {cpu_seconds / steady_seconds(runs[final]):.2f}")


if __name__ == "__main__":
    main()
