"""Inside-view benchmark: `POST /inside/{step}` (every layer's output for one image) against
`POST /predict/{step}`, same service, same upload, in turns; and what the inside view costs
the service when it loads a version.

    python bench/inside.py [--models-dir DIR] [--requests 20]

The real service (`uvicorn service.app:app`, production settings) on a volume: --models-dir
(default $MODELS_DIR when it holds trained steps), else one it trains itself into a temporary
folder: every step for one epoch on 500 MNIST images (a few minutes on 2 cores). The time of
a look inside depends on a step's architecture, not on how well it was trained.

The upload is what the lab page sends: the first MNIST test digit drawn as black strokes on a
280x280 canvas, PNG (bench/explain.py's). For each trained step, one client posts it to
/predict/{step} and then to /inside/{step} (the page's default: the first 8 channels of each
layer), in turns, --requests times each after a warm-up. The table gives each route's median
latency, the size of the inside answer (JSON, uncompressed), and, measured in this process,
what loading the version's inside view costs: the time to build its graph of every layer's
output with its onnxruntime session, and the bytes of the weights that session holds again.

Target: the largest step's (most parameters) /inside median under 60 ms. The last line is
`ratio: X.XX`: that median over 60 ms (under 1 meets the target).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.explain import canvas_png, post, trained_volume  # noqa: E402
from service.inside import InsideModel  # noqa: E402
from tests.servers import serve  # noqa: E402
from tests.service.photos import load_mnist  # noqa: E402
from volume import STEP_SLUGS, read_current  # noqa: E402

TARGET_MS = 60.0


def load_cost(models: Path, slug: str) -> tuple[float, int]:
    """Seconds to build the step's inside view from its published files, the median of 3,
    and the bytes of weights its session holds (a second copy beside the served model's)."""
    published = read_current(models, slug)
    assert published is not None, slug
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        view = InsideModel(published.model_bytes, published.summary, ort.SessionOptions())
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), sum(w.nbytes for w in view.weights.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR"))
    parser.add_argument(
        "--mnist-dir",
        default=os.environ.get("MNIST_DIR", str(ROOT.parent / "shared/datasets/mnist")),
    )
    parser.add_argument("--requests", type=int, default=20, help="per route and step")
    args = parser.parse_args()

    models = trained_volume(args.models_dir, args.mnist_dir)
    images, _ = load_mnist(Path(args.mnist_dir))
    upload = canvas_png(images[0])
    env = os.environ | {"MODELS_DIR": str(models), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1"]
    with (
        tempfile.TemporaryDirectory() as logs,
        serve(lambda p: [*command, "--port", str(p)], env, ROOT, Path(logs) / "log") as (
            client,
            _,
        ),
    ):
        steps = {s["slug"]: s for s in client.get("/steps").json() if s["trained"]}
        print(f"volume: {models}; steps: {', '.join(steps)}; cpus: {os.cpu_count()}")
        print()
        print(
            "| step | params | /predict p50 ms | /inside p50 ms | answer bytes "
            "| load ms | weights held again |"
        )
        print("|---|--:|--:|--:|--:|--:|--:|")
        medians: dict[str, float] = {}
        for slug in [s for s in STEP_SLUGS if s in steps]:
            for _ in range(3):  # warm-up
                post(client, f"/predict/{slug}", upload)
                post(client, f"/inside/{slug}", upload)
            predict, inside = [], []
            for _ in range(args.requests):
                predict.append(post(client, f"/predict/{slug}", upload))
                inside.append(post(client, f"/inside/{slug}", upload))
            answer = client.post(f"/inside/{slug}", files={"file": ("d.png", upload)})
            answer.raise_for_status()
            medians[slug] = statistics.median(inside) * 1e3
            seconds, held = load_cost(models, slug)
            print(
                f"| `{slug}` | {steps[slug]['params']:,} | {statistics.median(predict) * 1e3:.1f} "
                f"| {medians[slug]:.1f} | {len(answer.content):,} | {seconds * 1e3:.0f} "
                f"| {held / 1e3:,.0f} KB |"
            )
    largest = max(medians, key=lambda s: steps[s]["params"])
    holds = medians[largest] < TARGET_MS
    print()
    print(
        f"target: the largest step's /inside p50 under {TARGET_MS:.0f} ms: "
        f"{'holds' if holds else 'missed'} ({largest}, {medians[largest]:.1f} ms)"
    )
    print(f"ratio: {medians[largest] / TARGET_MS:.2f}")


if __name__ == "__main__":
    main()
