"""Explanation benchmark: `POST /explain/{step}` against `POST /predict/{step}`, same service,
same uploads, in turns.

    python bench/explain.py [--models-dir DIR] [--requests 20] [--digits 10]

The real service (`uvicorn service.app:app`, production settings) on a volume: --models-dir
(default $MODELS_DIR when it holds trained steps), else one it trains itself into a temporary
folder: every step for one epoch on 500 MNIST images (a few minutes on 2 cores). The time of an
explanation depends on a step's architecture and on how much ink the digit has, not on how well
the step was trained, so a brief run measures what a full one would.

The uploads are what the lab page sends: MNIST test digits (the first --digits) drawn as black
strokes on a 280x280 canvas, PNG. For each trained step, one client posts the same digit to
/predict/{step} and then to /explain/{step}, in turns, --requests times each after a warm-up;
the table gives each route's median latency, their ratio, and the squares the explanation ran
(occlusion: 4x4 squares every 2 pixels, only those holding ink, in one onnxruntime batch). Then
what the page waits for after a drawing: POST /predict/all, then every step's heatmap in turn.

The last line is `ratio: X.XX`: the summed /explain medians of every trained step over their
summed /predict medians, the price of the heatmaps relative to the answers. Target: every
step's /explain median under 250 ms (a heatmap comes within a quarter second of the answer).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

from tests.servers import serve  # noqa: E402
from tests.service.photos import load_mnist  # noqa: E402
from volume import STEP_SLUGS, read_index  # noqa: E402

TARGET_MS = 250.0


def canvas_png(digit: np.ndarray) -> bytes:
    """A digit as the page's pad sends it: black strokes 18 px wide on a white 280x280 PNG,
    one stroke along each run of ink of each row, the digit in the middle 80 %."""
    image = Image.new("RGB", (280, 280), "white")
    pen = ImageDraw.Draw(image)
    rows, cols = np.nonzero(digit >= 160)
    top, left = rows.min(), cols.min()
    cell = 224 / max(rows.max() - top + 1, cols.max() - left + 1)
    for r, c in zip(rows, cols, strict=True):
        x, y = 28 + cell * (c - left + 0.5), 28 + cell * (r - top + 0.5)
        pen.ellipse((x - 9, y - 9, x + 9, y + 9), fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def trained_volume(given: str | None, mnist_dir: str) -> Path:
    if given and read_index(Path(given)).steps:
        return Path(given)
    out = Path(tempfile.mkdtemp(prefix="bench-explain-")) / "models"
    print(f"training every step briefly into {out} ...", file=sys.stderr)
    command = [sys.executable, "-m", "trainer", "run", "--steps", "all", "--epochs", "1"]
    command += ["--limit", "500", "--quiet", "--out", str(out), "--data-dir", mnist_dir]
    subprocess.run(command, cwd=ROOT, check=True)
    return out


def post(client: httpx.Client, path: str, data: bytes) -> float:
    started = time.perf_counter()
    answer = client.post(path, files={"file": ("digit.png", data, "image/png")})
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR"))
    parser.add_argument(
        "--mnist-dir",
        default=os.environ.get("MNIST_DIR", str(ROOT.parent / "shared/datasets/mnist")),
    )
    parser.add_argument("--requests", type=int, default=20, help="per route and step")
    parser.add_argument("--digits", type=int, default=10, help="MNIST test digits, in turn")
    args = parser.parse_args()

    models = trained_volume(args.models_dir, args.mnist_dir)
    images, _ = load_mnist(Path(args.mnist_dir))
    uploads = [canvas_png(image) for image in images[: args.digits]]
    env = os.environ | {"MODELS_DIR": str(models), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1"]
    with (
        tempfile.TemporaryDirectory() as logs,
        serve(lambda p: [*command, "--port", str(p)], env, ROOT, Path(logs) / "log") as (
            client,
            _,
        ),
    ):
        trained = [s["slug"] for s in client.get("/steps").json() if s["trained"]]
        print(f"volume: {models}; steps: {', '.join(trained)}; cpus: {os.cpu_count()}")
        print()
        print("| step | /predict p50 ms | /explain p50 ms | explain/predict | squares run |")
        print("|---|--:|--:|--:|--:|")
        medians: dict[str, tuple[float, float]] = {}
        for slug in [s for s in STEP_SLUGS if s in trained]:
            for data in uploads[:3]:  # warm-up
                post(client, f"/predict/{slug}", data)
                post(client, f"/explain/{slug}", data)
            predict, explain, squares = [], [], []
            for i in range(args.requests):
                data = uploads[i % len(uploads)]
                predict.append(post(client, f"/predict/{slug}", data))
                explain.append(post(client, f"/explain/{slug}", data))
            for data in uploads:
                body = client.post(f"/explain/{slug}", files={"file": ("d.png", data)}).json()
                squares.append(body["occluded"])
            p, e = statistics.median(predict) * 1e3, statistics.median(explain) * 1e3
            medians[slug] = (p, e)
            print(
                f"| `{slug}` | {p:.1f} | {e:.1f} | {e / p:.1f} | {statistics.mean(squares):.0f} |"
            )

        page = []
        for i in range(max(3, args.requests // 4)):
            data = uploads[i % len(uploads)]
            started = time.perf_counter()
            answers = post(client, "/predict/all", data)
            for slug in trained:
                post(client, f"/explain/{slug}", data)
            page.append((answers, time.perf_counter() - started))
        print()
        print(
            f"the page, per drawing: every answer (POST /predict/all) in "
            f"{statistics.median(a for a, _ in page) * 1e3:.0f} ms, then every heatmap by "
            f"{statistics.median(t for _, t in page) * 1e3:.0f} ms (medians of {len(page)})"
        )
    slowest = max(medians, key=lambda s: medians[s][1])
    holds = medians[slowest][1] < TARGET_MS
    print(
        f"target: every /explain p50 under {TARGET_MS:.0f} ms: "
        f"{'holds' if holds else 'missed'} (slowest: {slowest}, {medians[slowest][1]:.0f} ms)"
    )
    total_explain = sum(e for _, e in medians.values())
    total_predict = sum(p for p, _ in medians.values())
    print(f"ratio: {total_explain / total_predict:.2f}")


if __name__ == "__main__":
    main()
