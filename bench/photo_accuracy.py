"""How well a served step reads photo-like digits, next to how well it reads MNIST itself, with
the preprocessing as it is and as it was.

The photo-like images are MNIST test digits rendered as users send them (ink on paper at any
size, off-centre, colour ink, blur, noise, JPEG, EXIF rotation, canvas drawings), then 12 MP
phone photos (uneven light, JPEG quality 80-95, stored sideways with an EXIF orientation); see
tests/service/photos.py. Each goes through the service's own preprocessing
(`service.images.preprocess`, as `/predict` does) and the step's published ONNX model; so do
all 10,000 MNIST test digits sent as 28x28 PNGs. The same uploads also go through the
preprocessing as it was at --before (a git revision, loaded from git; default: before issue 17
made photos work at the resolution the digit needs), so that both columns come from one run.

Run, after the trainer has filled a volume:

    MODELS_DIR=models MNIST_DIR=../shared/datasets/mnist .venv/bin/python bench/photo_accuracy.py
    (MNIST_DIR defaults to ../shared/datasets/mnist)
    .venv/bin/python bench/photo_accuracy.py --count 1000 --phones 100 --step scheduler

It prints a markdown table: per kind of upload, how many, the accuracy on the same digits as
MNIST tensors (so a kind's digits can be told from its rendering: a kind that got harder digits
reads worse however it is preprocessed), before and now; and whether any kind lost more than
0.2 points (the target). The last line is `worst change: X.XX points`.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from bench.preprocess import BEFORE_REV, images_at
from service import images
from service.images import normalise
from service.models import LoadedModel, ModelRegistry
from tests.service.photos import encode, load_mnist, photo_like_set
from volume import STEP_SLUGS

MAX_PIXELS = 25_000_000  # the service's default MAX_IMAGE_PIXELS


def predict(model: LoadedModel, tensors: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [model.predict(tensors[i : i + 500]).argmax(axis=1) for i in range(0, len(tensors), 500)]
    )


def read(model: LoadedModel, module: ModuleType, uploads: list[bytes]) -> np.ndarray:
    """The digit `module.preprocess` and the model make of each upload; -1 where refused (422)."""
    tensors, refused = [], []
    for data in uploads:
        try:
            tensors.append(module.preprocess(data, MAX_PIXELS))
            refused.append(False)
        except module.ImageError:
            tensors.append(np.zeros((1, 28, 28), np.float32))
            refused.append(True)
    digits = predict(model, np.stack(tensors))
    digits[np.array(refused)] = -1
    return digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    parser.add_argument(
        "--mnist-dir", default=os.environ.get("MNIST_DIR", "../shared/datasets/mnist")
    )
    parser.add_argument("--step", help="slug; default: the last trained step (the final one)")
    parser.add_argument("--count", type=int, default=1000, help="photo-like images")
    parser.add_argument("--phones", type=int, default=100, help="12 MP phone photos after them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before", default=BEFORE_REV, help="the git revision to compare with")
    args = parser.parse_args()

    registry = ModelRegistry(Path(args.models_dir))
    registry.refresh()
    trained = [s for s in STEP_SLUGS if s in registry.models]
    if not trained:
        sys.exit(f"no step is published in {args.models_dir}: run `python -m trainer run` first")
    model = registry.models[args.step or trained[-1]]
    try:
        digits, labels = load_mnist(Path(args.mnist_dir), "t10k")
    except OSError as e:
        sys.exit(f"cannot read MNIST's test set from {args.mnist_dir} ({e}): pass --mnist-dir")
    before = images_at(args.before)

    photos = photo_like_set(digits, labels, args.count, seed=args.seed, phones=args.phones)
    truth = np.array([p.label for p in photos])
    as_tensors = predict(model, np.stack([normalise(d.astype(np.float32)) for d in digits]))
    pngs = [encode(Image.fromarray(d), "PNG") for d in digits]
    kinds: dict[str, np.ndarray] = collections.defaultdict(lambda: np.zeros(0, int))
    for i, photo in enumerate(photos):
        kinds[photo.kind] = np.append(kinds[photo.kind], i)
    columns = {
        "before": read(model, before, [p.data for p in photos]),
        "now": read(model, images, [p.data for p in photos]),
    }
    mnist = {"before": read(model, before, pngs), "now": read(model, images, pngs)}

    def pct(right: np.ndarray) -> float:
        return 100 * float(right.mean())

    print(f"step {model.step} version {model.version}; before = {args.before}")
    print()
    print("| uploads | count | same digits as MNIST tensors | before | now | now - before |")
    print("|---|--:|--:|--:|--:|--:|")
    changes: list[tuple[str, float]] = []

    def row(name: str, got: dict[str, np.ndarray], right: np.ndarray, tensors: float) -> None:
        was, now = pct(got["before"] == right), pct(got["now"] == right)
        changes.append((name, now - was))
        print(
            f"| {name} | {len(right):,} | {tensors:.2f} % | {was:.2f} % | {now:.2f} % "
            f"| {now - was:+.2f} |"
        )

    # Each photo is of MNIST test digit number i, its place in the set.
    row("every photo-like upload", columns, truth, pct(as_tensors[: len(photos)] == truth))
    for kind, where in sorted(kinds.items()):
        of_kind = {name: got[where] for name, got in columns.items()}
        row(kind, of_kind, truth[where], pct(as_tensors[where] == truth[where]))
    row("MNIST test digits as 28x28 PNG", mnist, labels, pct(as_tensors == labels))
    refused = {name: int((got == -1).sum()) for name, got in columns.items()}
    print()
    print(f"photos refused (422): before {refused['before']}, now {refused['now']}")
    worst_kind, worst = min(changes, key=lambda change: change[1])
    holds = worst >= -0.2
    print(f"target {'holds' if holds else 'FAILS'}: no kind loses more than 0.2 points "
          f"(worst: {worst_kind}, {worst:+.2f})")  # fmt: skip
    print(f"worst change: {worst:+.2f} points")


if __name__ == "__main__":
    main()
