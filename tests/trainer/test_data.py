"""Reading MNIST: gz and raw folders, torchvision's layout, and every way it can be wrong."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

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
    assert torch.allclose(data.augment(x, 0.0, 0.0), x, atol=1e-5)
