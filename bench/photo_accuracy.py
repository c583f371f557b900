"""How well a served step reads photo-like digits, next to how well it reads MNIST itself.

The photo-like images are MNIST test digits rendered as users send them (ink on paper at any
size, off-centre, colour ink, blur, noise, JPEG, EXIF rotation, canvas drawings; see
tests/service/photos.py). Each goes through the service's own preprocessing
(`service.images.preprocess`) and the step's published ONNX model, as `/predict` does.

Run, after the trainer has filled a volume:

    MODELS_DIR=models MNIST_DIR=../shared/datasets/mnist .venv/bin/python bench/photo_accuracy.py
    (MNIST_DIR defaults to ../shared/datasets/mnist)
    .venv/bin/python bench/photo_accuracy.py --count 1000 --step scheduler

It prints the step, its accuracy on the photo-like set, on the same digits as MNIST tensors,
on the whole MNIST test set, and per kind of photo.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from service.images import ImageError, normalise, preprocess
from service.models import LoadedModel, ModelRegistry
from tests.service.photos import load_mnist, photo_like_set
from volume import STEP_SLUGS


def accuracy(model: LoadedModel, tensors: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.concatenate(
        [model.predict(tensors[i : i + 500]).argmax(axis=1) for i in range(0, len(tensors), 500)]
    )
    return float((predicted == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    parser.add_argument(
        "--mnist-dir", default=os.environ.get("MNIST_DIR", "../shared/datasets/mnist")
    )
    parser.add_argument("--step", help="slug; default: the last trained step (the final one)")
    parser.add_argument("--count", type=int, default=1000, help="photo-like images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    registry = ModelRegistry(Path(args.models_dir))
    registry.refresh()
    trained = [s for s in STEP_SLUGS if s in registry.models]
    if not trained:
        sys.exit(f"no step is published in {args.models_dir}: run `python -m trainer run` first")
    model = registry.models[args.step or trained[-1]]
    try:
        images, labels = load_mnist(Path(args.mnist_dir), "t10k")
    except OSError as e:
        sys.exit(f"cannot read MNIST's test set from {args.mnist_dir} ({e}): pass --mnist-dir")

    photos = photo_like_set(images, labels, args.count, seed=args.seed)
    tensors, unread = [], 0
    for photo in photos:
        try:
            tensors.append(preprocess(photo.data, max_pixels=25_000_000))
        except ImageError:  # counted as wrong: the service would have answered 422
            tensors.append(np.full((1, 28, 28), np.nan, np.float32))
            unread += 1
    photo_tensors = np.stack(tensors)
    mnist_tensors = np.stack([normalise(d.astype(np.float32)) for d in images])
    predicted = model.predict(np.nan_to_num(photo_tensors)).argmax(axis=1)
    right = (predicted == labels[: args.count]) & ~np.isnan(photo_tensors).any(axis=(1, 2, 3))

    print(f"step {model.step} version {model.version}")
    print(f"photo-like accuracy ({args.count} images):  {100 * right.mean():.2f} %")
    same = accuracy(model, mnist_tensors[: args.count], labels[: args.count])
    print(f"MNIST accuracy, the same {args.count} digits: {100 * same:.2f} %")
    print(
        f"MNIST accuracy, all {len(labels)} test digits: "
        f"{100 * accuracy(model, mnist_tensors, labels):.2f} %"
    )
    print(f"photos refused (422): {unread}")
    per_kind = collections.defaultdict(list)
    for photo, ok in zip(photos, right, strict=True):
        per_kind[photo.kind].append(ok)
    for kind, oks in sorted(per_kind.items()):
        print(f"  {kind:18s} {100 * np.mean(oks):6.2f} %  ({len(oks)})")


if __name__ == "__main__":
    main()
