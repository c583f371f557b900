"""Training input pipeline benchmark: ours against the textbook one, one epoch of the final step.

    python bench/train_speed.py [--data-dir DIR] [--repeats 3] [--images 60000] [--device cpu]

Both train the same model (the `scheduler` step) with the same recipe, batch size and
augmentation (random rotation and translation) from the same initial weights:

- baseline: torchvision's textbook pipeline, a DataLoader with 2 workers over PIL images, each
  image augmented by `transforms.RandomAffine`, `ToTensor` and `Normalize` one at a time;
- ours: MNIST held as one uint8 tensor, each batch augmented at once with one affine_grid +
  grid_sample (`trainer.data.batches`), on the training device.

It prints images per second (the median of --repeats epochs each) and the test accuracy after
the epoch for both; the last line is `ratio: X.XX`, our speed over the baseline's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.data import Split, read_mnist_folder
from trainer.loop import evaluate, make_optimizer, make_scheduler, train_one_epoch
from trainer.steps import Recipe, get_step
from volume import MNIST_MEAN, MNIST_STD


class PILMNIST(Dataset[tuple[torch.Tensor, int]]):
    """What torchvision.datasets.MNIST does per item: a PIL image, then the transforms."""

    def __init__(self, split: Split, transform: transforms.Compose) -> None:
        self.images, self.labels, self.transform = (
            split.images.numpy(),
            split.labels.tolist(),
            transform,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i], mode="L")), self.labels[i]


def textbook_epoch(
    model: torch.nn.Module, train: Split, recipe: Recipe, device: torch.device
) -> None:
    transform = transforms.Compose(
        [
            transforms.RandomAffine(
                degrees=recipe.rotation, translate=(recipe.translate, recipe.translate)
            ),
            transforms.ToTensor(),
            transforms.Normalize((MNIST_MEAN,), (MNIST_STD,)),
        ]
    )
    loader = DataLoader(
        PILMNIST(train, transform),
        batch_size=recipe.batch_size,
        shuffle=True,
        num_workers=2,
        pin_memory=device.type == "cuda",
    )
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, len(loader))
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def our_epoch(model: torch.nn.Module, train: Split, recipe: Recipe, device: torch.device) -> None:
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, -(-len(train) // recipe.batch_size))
    train_one_epoch(model, train.to(device), optimizer, scheduler, recipe, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    default_data = os.environ.get("MNIST_DIR", "../shared/datasets/mnist")
    parser.add_argument("--data-dir", type=Path, default=Path(default_data))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=60000, help="training images per epoch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    mnist = read_mnist_folder(args.data_dir)
    train, test = mnist.train.head(args.images), mnist.test.to(device)
    step = get_step("scheduler")
    recipe = replace(step.recipe, epochs=1)
    name = (
        torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(f"one epoch of `scheduler` on {len(train)} images, batch {recipe.batch_size}, {name}")

    results: dict[str, tuple[list[float], list[float]]] = {}
    for label, epoch in (
        ("baseline (DataLoader + PIL transforms, 2 workers)", textbook_epoch),
        ("ours (uint8 tensor, batch augmentation)", our_epoch),
    ):
        speeds, accuracies = [], []
        for repeat in range(args.repeats):
            torch.manual_seed(repeat)
            model = step.build().to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            epoch(model, train, recipe, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            speeds.append(len(train) / (time.perf_counter() - start))
            accuracies.append(evaluate(model, test)[1])
        results[label] = (speeds, accuracies)
        print(
            f"{label:52s} {statistics.median(speeds):8.0f} images/s (median of {args.repeats}: "
            f"{', '.join(f'{s:.0f}' for s in speeds)}), test accuracy after the epoch "
            f"{statistics.median(accuracies):.2f} %"
        )
    (base, base_acc), (ours, ours_acc) = results.values()
    print(
        f"accuracy difference (ours - baseline): {statistics.median(ours_acc) - statistics.median(base_acc):+.2f} points"
    )
    print(f"ratio: {statistics.median(ours) / statistics.median(base):.2f}")


if __name__ == "__main__":
    main()
