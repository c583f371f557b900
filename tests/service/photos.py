"""A deterministic photo-like test set made from MNIST test digits.

Users send photos and drawings, not MNIST tensors: ink on paper at any size, off-centre, in
colour, blurred, noisy, JPEG-compressed, rotated by EXIF, or black strokes on a transparent
canvas. Each image here is one MNIST test digit rendered that way, so its label is known.
Phone photos are the other half: 12-megapixel JPEGs of a digit on a sheet of paper in uneven
light (a gradient and a soft shadow), saved at quality 80-95 and stored the way phones store
them, sideways with an EXIF orientation tag for a portrait shot. Used by the service tests and
by `bench/photo_accuracy.py` and `bench/preprocess.py`.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageFilter

# (format, content type) per variant; JPEG is what phones send, so it comes most often.
KINDS = (
    "jpeg-paper",
    "jpeg-paper",
    "jpeg-exif-rotated",
    "png-canvas",
    "webp-paper",
    "gif-paper",
    "bmp-paper",
    "tiff-paper",
    "jpeg-chalkboard",
)
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
INKS = ((20, 20, 25), (25, 40, 140), (150, 20, 25), (20, 90, 40), (90, 90, 90))  # black..pencil
PHONE_KIND = "jpeg-phone-12mp"
PHONE_SIZE = (4032, 3024)  # a 12 MP sensor, as phones store it: landscape
PHONE_QUALITY = (80, 95)  # the JPEG qualities phones save at, lowest and highest
# EXIF orientation -> the counter-clockwise turn that stores the upright picture that way.
STORED_TURN = {1: 0, 3: 180, 6: 90, 8: 270}


@dataclass(frozen=True)
class Photo:
    data: bytes
    content_type: str
    label: int
    kind: str


def load_mnist(mnist_dir: Path, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """Images [N,28,28] uint8 and labels [N] from the IDX files (`.gz` or raw)."""

    def read(name: str, offset: int) -> np.ndarray:
        path = Path(mnist_dir) / name
        raw = gzip.decompress(path.read_bytes()) if path.exists() else None
        raw = raw or path.with_suffix("").read_bytes()  # the raw IDX file, not gzipped
        return np.frombuffer(raw, np.uint8, offset=offset)

    images = read(f"{split}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read(f"{split}-labels-idx1-ubyte.gz", 8)
    return images, labels


def render(digit: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One MNIST digit (ink bright on black, 28x28) as an encoded photo-like image."""
    height = int(rng.integers(40, 160))  # the digit's size on the photo
    ink_alpha = Image.fromarray(digit).resize((height, height), Image.Resampling.BICUBIC)
    canvas_w = int(height * rng.uniform(1.3, 3.0))
    canvas_h = int(height * rng.uniform(1.3, 3.0))
    left = int(rng.integers(0, canvas_w - height + 1))  # anywhere, not centred
    top = int(rng.integers(0, canvas_h - height + 1))
    alpha = np.zeros((canvas_h, canvas_w), np.float32)
    alpha[top : top + height, left : left + height] = np.asarray(ink_alpha, np.float32) / 255

    if kind == "png-canvas":  # a web canvas: black strokes on transparent
        rgba = np.zeros((canvas_h, canvas_w, 4), np.uint8)
        rgba[..., 3] = (alpha * 255).round().astype(np.uint8)
        return encode(Image.fromarray(rgba, "RGBA"), "PNG"), "image/png"

    if kind == "jpeg-chalkboard":  # light strokes on a dark board
        paper = np.array([40, 55, 45], np.float32) + rng.normal(0, 5, 3)
        ink = np.array([235, 235, 225], np.float32)
    else:
        paper = np.array([245, 240, 230], np.float32) + rng.uniform(-25, 10, 3)
        ink = np.array(INKS[int(rng.integers(len(INKS)))], np.float32)
    # Uneven light across the sheet, then the ink on top.
    shade = np.linspace(1.0, rng.uniform(0.8, 1.0), canvas_w, dtype=np.float32)[None, :, None]
    pixels = paper * shade * (1 - alpha[..., None]) + ink * alpha[..., None]
    pixels += rng.normal(0, rng.uniform(0, 6), pixels.shape)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, height / 60)))

    if kind == "jpeg-exif-rotated":  # stored sideways, EXIF says how to turn it upright
        orientation, stored = [(3, 180), (6, 90), (8, 270)][int(rng.integers(3))]
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        image.rotate(stored, expand=True).save(buffer, "JPEG", quality=85, exif=exif)
        return buffer.getvalue(), "image/jpeg"
    image_format = kind.split("-")[0].upper()
    if image_format == "GIF":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    quality = int(rng.integers(50, 95))
    return encode(image, image_format, quality=quality), CONTENT_TYPES[image_format]


def phone_photo(
    digit: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int] = PHONE_SIZE,
    orientation: int | None = None,
    quality: int | None = None,
) -> bytes:
    """One MNIST digit written on paper and photographed by a phone: a JPEG of `size` pixels as
    stored (landscape for 4032x3024), turned by an EXIF `orientation` (1, 3, 6 or 8; random
    unless given), at JPEG `quality` (80-95 unless given).

    Drawn with Pillow at full size: the light (a gradient, a soft shadow) is made at 1/16 scale
    and enlarged, the sensor's grain is one tile of noise repeated; about half a second each.
    """
    if orientation is None:
        orientation = (1, 3, 6, 8)[int(rng.integers(4))]
    if quality is None:
        quality = int(rng.integers(PHONE_QUALITY[0], PHONE_QUALITY[1] + 1))
    turn = STORED_TURN[orientation]
    width, height = size if turn in (0, 180) else size[::-1]  # the upright picture's size
    # The light across the sheet, at 1/16 scale: brighter on one side, with a soft shadow
    # (a hand, the phone) over a part of it.
    small_w, small_h = -(-width // 16), -(-height // 16)
    ys, xs = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    light = 1 - rng.uniform(0, 0.25) * xs / small_w - rng.uniform(0, 0.2) * ys / small_h
    angle = rng.uniform(0, 2 * np.pi)
    across = (xs - small_w / 2) * np.cos(angle) + (ys - small_h / 2) * np.sin(angle)
    edge = rng.uniform(0.3, 0.6) * max(small_w, small_h)  # the shadow starts this far out
    light *= 1 - rng.uniform(0.05, 0.2) / (1 + np.exp(-(across - edge) / (0.05 * small_w)))
    paper = np.array([245, 240, 230], np.float32) + rng.uniform(-25, 10, 3)
    shade = Image.fromarray((light[..., None] * paper).clip(0, 255).astype(np.uint8), "RGB")
    photo = shade.resize((width, height), Image.Resampling.BILINEAR)
    # The digit: 15 to 60 % of the short side, anywhere on the sheet.
    side = int(min(width, height) * rng.uniform(0.15, 0.6))
    alpha = Image.new("L", (width, height), 0)
    place = (int(rng.integers(0, width - side)), int(rng.integers(0, height - side)))
    alpha.paste(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), place)
    ink = INKS[int(rng.integers(len(INKS)))]
    photo = Image.composite(Image.new("RGB", (width, height), ink), photo, alpha)
    # The sensor's grain, what is left of it after the phone's own denoising.
    tile = rng.normal(128, rng.uniform(1, 3), (509, 509)).clip(0, 255).astype(np.uint8)
    grain = Image.fromarray(np.tile(tile, (height // 509 + 1, width // 509 + 1))[:height, :width])
    photo = ImageChops.add(photo, Image.merge("RGB", [grain] * 3), offset=-128)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = photo.rotate(turn, expand=True) if turn else photo
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=quality, exif=exif)
    return buffer.getvalue()


def encode(image: Image.Image, image_format: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def photo_like_set(
    images: np.ndarray, labels: np.ndarray, count: int, seed: int = 0, phones: int = 0
) -> list[Photo]:
    """`count` photo-like images of the first `count` digits, then `phones` phone photos of
    the digits after them; the same for the same seed (the phones do not change the others)."""
    rng = np.random.default_rng(seed)
    photos = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        data, content_type = render(images[i], kind, rng)
        photos.append(Photo(data, content_type, int(labels[i]), kind))
    phone_rng = np.random.default_rng([seed, 12])
    for i in range(count, count + phones):
        data = phone_photo(images[i], phone_rng)
        photos.append(Photo(data, "image/jpeg", int(labels[i]), PHONE_KIND))
    return photos
