"""Turn an uploaded photo or drawing into the tensor the models were trained on.

Users send photos of digits written on paper and drawings from a web canvas, not MNIST
tensors. MNIST's own recipe made each digit light on black, size-normalised into a 20x20 box
keeping its aspect ratio, then centred by its centre of mass in a 28x28 field; this module
does the same to any image Pillow reads, so that a 28x28 MNIST image passes through unchanged.

Pure numpy and Pillow: every step is a function that can be tested on its own.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from volume import IMAGE_SIZE, MNIST_MEAN, MNIST_STD

# What users upload. Pillow knows dozens of formats; every extra decoder is attack surface.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
DIGIT_BOX = 20  # MNIST fits each digit into 20x20 ...
WORK_SIZE = 1024  # ... so a phone photo is shrunk to this (longest side) before anything else
MIN_CONTRAST = 32  # ink must stand this far (of 255) from the paper to count as a digit
# The crop keeps the pixels with at least a quarter of the darkest stroke's ink: fainter ones
# away from the digit are paper texture and JPEG noise. MNIST's own digits crop the same.
CROP_LEVEL = 64


class ImageError(ValueError):
    """An upload that cannot become a digit; the message tells the user what to send instead."""


class UndecodableImage(ImageError):
    pass


class ImageTooLarge(ImageError):
    pass


class NoDigit(ImageError):
    pass


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an upload, refusing formats we do not accept and images over `max_pixels`."""
    formats = ", ".join(ACCEPTED_FORMATS)
    try:
        # Opening reads only the header, so the size is known before a pixel is decoded. Pillow
        # checks it too (the app makes its warning an error), but only against its global cap.
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image is {width}x{height} pixels, over the limit of {max_pixels:,}; "
                "send a smaller photo"
            )
        image.draft("L", (WORK_SIZE, WORK_SIZE))  # JPEG decodes straight to a smaller grey
        image.load()
        return ImageOps.exif_transpose(image)  # phones store photos sideways plus an EXIF tag
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(
            f"the image decodes to more than {max_pixels:,} pixels; send a smaller photo"
        ) from None
    except Exception as e:
        # Decoders raise many types (OSError, SyntaxError, ValueError, struct.error, ...) on
        # hostile bytes; every one of them means the same thing to the user.
        raise UndecodableImage(
            f"the upload is not a readable image ({type(e).__name__}: {e}); "
            f"send a complete {formats} file"
        ) from None


def to_grey(image: Image.Image) -> np.ndarray:
    """Grey levels 0..255 as float32 [H,W], transparency flattened onto paper."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, np.float32) / 257
    if image.mode in ("I", "F"):
        grey = np.asarray(image, np.float32)
        span = float(grey.max() - grey.min())
        return (grey - grey.min()) * (255 / span) if span else np.zeros_like(grey)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # A canvas drawing is black strokes on transparent black: on white they become ink.
        # Light strokes (a dark-mode canvas) go on black instead, or they would vanish.
        rgba = image.convert("RGBA")
        opaque = np.asarray(rgba.getchannel("A")) > 127
        light = opaque.any() and np.asarray(rgba.convert("L"))[opaque].mean() > 127
        paper = Image.new("RGBA", rgba.size, "black" if light else "white")
        image = Image.alpha_composite(paper, rgba)
    return np.asarray(image.convert("L"), np.float32)


def shrink(grey: np.ndarray, max_side: int = WORK_SIZE) -> np.ndarray:
    """Average blocks of pixels so the longest side is at most `max_side` (a faster photo)."""
    factor = -(-max(grey.shape) // max_side)
    if factor <= 1:
        return grey
    height, width = (grey.shape[0] // factor) * factor, (grey.shape[1] // factor) * factor
    blocks = grey[:height, :width].reshape(height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def paper(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """The paper's grey level at every pixel, and the paper's noise (about 5 sigma).

    A photo's paper is rarely even: light falls off across the sheet. The image's border is
    paper, so a plane fitted to it (twice, the second time without the ink the border may
    touch) models the light; the spread of the border around it is the sensor's noise.
    """
    height, width = grey.shape
    ys, xs = np.mgrid[:height, :width]
    edge = np.zeros(grey.shape, bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    terms = np.stack([np.ones(edge.sum()), xs[edge] / width, ys[edge] / height], axis=1)
    values = grey[edge].astype(np.float64)
    keep = np.ones(len(values), bool)
    for _ in range(2):
        plane = np.linalg.lstsq(terms[keep], values[keep], rcond=None)[0]
        residual = np.abs(values - terms @ plane)
        noise = 5 * 1.4826 * float(np.median(residual))  # the median absolute deviation
        keep = residual <= noise + 1
    level = plane[0] + plane[1] * xs / width + plane[2] * ys / height
    return level.astype(np.float32), noise


def ink(grey: np.ndarray) -> np.ndarray:
    """How much ink is at each pixel, 0..255, on black: MNIST's polarity whatever the photo's.

    The ink is whichever side of the paper reaches further (dark pen on white paper, or chalk
    on a board); what stays within the paper's noise is paper.
    """
    level, noise = paper(grey)
    darker, lighter = level - grey, grey - level
    amount = darker if darker.max() > lighter.max() else lighter
    amount = np.clip(amount - noise, 0, None)
    peak = float(amount.max())
    if peak < MIN_CONTRAST:
        raise NoDigit(
            "no digit found: the image is blank or its ink is too faint; "
            "send a photo of one dark digit on light paper (or light on dark)"
        )
    return amount * (255 / peak)


def mnist_form(amount: np.ndarray) -> np.ndarray:
    """Crop to the digit, fit it in 20x20 keeping its aspect, centre its mass in 28x28."""
    rows = np.flatnonzero(amount.max(axis=1) >= CROP_LEVEL)
    cols = np.flatnonzero(amount.max(axis=0) >= CROP_LEVEL)
    scale = DIGIT_BOX / max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    # The crop keeps one output pixel's worth around the digit for its faint edges: MNIST's
    # anti-aliased rims fall outside the box of its strong pixels but belong to the digit.
    margin = int(np.ceil(1 / scale))
    first_row, first_col = max(rows[0] - margin, 0), max(cols[0] - margin, 0)
    digit = amount[first_row : rows[-1] + 1 + margin, first_col : cols[-1] + 1 + margin]
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))
    fitted = np.asarray(
        Image.fromarray(digit, "F").resize(size, Image.Resampling.BILINEAR), np.float32
    ).clip(0, None)
    fitted *= 255 / fitted.max()  # a thin pen stroke shrunk to 20 pixels is as dark as MNIST's

    # The integer shift that puts the centre of mass on the field's centre, kept inside it.
    ys, xs = np.mgrid[: fitted.shape[0], : fitted.shape[1]]
    mass = float(fitted.sum())
    centre_y, centre_x = (ys * fitted).sum() / mass, (xs * fitted).sum() / mass
    top = int(np.clip(round(IMAGE_SIZE / 2 - centre_y), 0, IMAGE_SIZE - fitted.shape[0]))
    left = int(np.clip(round(IMAGE_SIZE / 2 - centre_x), 0, IMAGE_SIZE - fitted.shape[1]))
    field = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    field[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return field


def normalise(field: np.ndarray) -> np.ndarray:
    """A 28x28 field of 0..255 as the models' input [1,28,28], normalised as in training."""
    return ((field / 255 - MNIST_MEAN) / MNIST_STD).astype(np.float32)[None]


def preprocess(data: bytes, max_pixels: int) -> np.ndarray:
    """The whole recipe: upload bytes to one model input [1,28,28] float32."""
    return normalise(mnist_form(ink(shrink(to_grey(decode(data, max_pixels))))))
