"""Reading MNIST: gz and raw folders, torchvision's layout, and every way it can be wrong."""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from trainer import data
from trainer.data import MNIST_SHA256, DataError, batches, download_mnist, read_mnist_folder

NAMES = list(MNIST_SHA256)


def copy_mnist(src: Path, dst: Path, gz: bool) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        if gz:
            shutil.copy(src / f"{name}.gz", dst / f"{name}.gz")
        else:
            (dst / name).write_bytes(gzip.decompress((src / f"{name}.gz").read_bytes()))
    return dst


def test_the_shared_read_only_folder_as_it_is(mnist_dir: Path) -> None:
    mnist = read_mnist_folder(mnist_dir)
    assert mnist.train.images.shape == (60000, 28, 28)
    assert mnist.test.images.shape == (10000, 28, 28)
    assert mnist.train.images.dtype == torch.uint8
    assert set(mnist.train.labels.tolist()) == set(range(10))
    assert mnist.checksums == MNIST_SHA256


@pytest.mark.parametrize("layout", ["raw", "torchvision"])
def test_raw_and_torchvision_layouts(mnist_dir: Path, tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    copy_mnist(mnist_dir, folder, gz=False)
    mnist = read_mnist_folder(tmp_path)
    assert len(mnist.train) == 60000
    assert mnist.checksums == MNIST_SHA256


def corrupt_byte(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[1000] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(raw)))


def not_gzip(path: Path) -> None:
    path.write_bytes(b"this is not gzip")


def remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (corrupt_byte, "checksum mismatch"),
        (not_gzip, "is not a valid gzip file"),
        (remove, "lacks t10k-labels-idx1-ubyte[.gz]"),
    ],
)
def test_a_damaged_folder_names_the_file_and_the_fix(
    mnist_dir: Path, tmp_path: Path, damage, message: str
) -> None:
    copy_mnist(mnist_dir, tmp_path, gz=True)
    damage(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as e:
        read_mnist_folder(tmp_path)
    assert message in str(e.value)
    assert "t10k-labels-idx1-ubyte" in str(e.value)
    assert "replace it" in str(e.value) or "--data-dir" in str(e.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"does not exist: pass --data-dir DIR \(or set MNIST_DIR\)"
    ):
        read_mnist_folder(tmp_path / "nope")


def test_offline_download_is_one_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(root: str, train: bool, download: bool) -> None:
        (Path(root) / "MNIST" / "raw").mkdir(parents=True)
        (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"half")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as e:
        download_mnist(tmp_path / "cache")
    assert "could not download MNIST" in str(e.value) and "offline?" in str(e.value)
    assert list((tmp_path / "cache").rglob("*")) == []


def test_batches_are_normalised_and_augmentation_keeps_shape() -> None:
    split = data.Split(torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8), torch.arange(300))
    plain = list(batches(split, 128, shuffle=False))
    assert [len(y) for _, y in plain] == [128, 128, 44]
    x0, y0 = plain[0]
    assert x0.shape == (128, 1, 28, 28) and x0.dtype == torch.float32
    assert torch.equal(y0, torch.arange(128))
    torch.manual_seed(0)
    xa, _ = next(batches(split, 128, shuffle=False, rotation=10, translate=0.1))
    assert xa.shape == x0.shape and not torch.equal(xa, x0)


def test_zero_augmentation_is_the_identity() -> None:
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(data.augment(x, 0.0, 0.0, 0.0, 0.0), x, atol=1e-5)


def square(n: int, side: int, value: float = 0.8) -> Tensor:
    """``n`` black 28x28 images with a ``side``-pixel grey square in the middle."""
    x = torch.zeros(n, 1, 28, 28)
    lo = (28 - side) // 2
    x[:, :, lo : lo + side, lo : lo + side] = value
    return x


@pytest.mark.parametrize(
    ("scale", "smallest", "largest"),
    # A 20-pixel square zoomed by 1 +- scale: its side stays within 20 * (1 +- scale),
    # give or take the pixel that nearest-neighbour sampling rounds to.
    [(0.0, 20, 20), (0.1, 17, 23), (0.25, 14, 26)],
)
def test_zoom_scales_the_digit_within_its_bounds(scale: float, smallest: int, largest: int) -> None:
    torch.manual_seed(0)
    out = data.augment(square(256, 20), 0.0, 0.0, scale=scale)
    sides = (out[:, 0] > 0).any(dim=1).sum(dim=1)  # rows the square covers
    assert smallest <= int(sides.min()) and int(sides.max()) <= largest
    if scale:
        assert int(sides.min()) < 20 < int(sides.max()), "both zooming in and out"


@pytest.mark.parametrize("brightness", [0.0, 0.2, 0.5])
def test_brightness_scales_strokes_and_keeps_the_background_black(brightness: float) -> None:
    torch.manual_seed(0)
    x = square(256, 10, value=0.6)
    out = data.augment(x, 0.0, 0.0, brightness=brightness)
    stroke = out[x > 0].view(256, -1)
    assert torch.all(out[x == 0] == 0), "the background stays 0, as the test images' is"
    assert torch.all(stroke == stroke[:, :1]), "one gain an image"
    gains = stroke[:, 0] / 0.6
    assert (
        float(gains.min()) >= 1 - brightness - 1e-6 and float(gains.max()) <= 1 + brightness + 1e-6
    )
    assert float(gains.max() - gains.min()) >= brightness  # the draws spread over the range
    assert torch.all(data.augment(square(4, 10, 1.0), 0.0, 0.0, brightness=0.5) <= 1.0)


def augment_before_zoom_and_gain(x: Tensor, rotation: float, translate: float) -> Tensor:
    """trainer/data.py's augment() as it was (dab10b9) when the runs in reports/runs trained."""
    n = x.shape[0]
    angle = (torch.rand(n) * 2 - 1) * math.radians(rotation)
    shift = (torch.rand(n, 2) * 2 - 1) * (2 * translate)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def test_zoom_and_gain_left_out_train_what_was_trained_before_them() -> None:
    """A recipe without zoom or gain draws the same random numbers, in the same order, as
    before both existed: the runs committed before them are still what main's code trains."""
    x = torch.rand(64, 1, 28, 28)
    torch.manual_seed(3)
    expected = augment_before_zoom_and_gain(x, 5.0, 0.03)
    expected_state = torch.random.get_rng_state()
    torch.manual_seed(3)
    assert torch.equal(data.augment(x, 5.0, 0.03, 0.0, 0.0), expected)
    assert torch.equal(torch.random.get_rng_state(), expected_state)
