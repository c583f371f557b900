"""Turn an uploaded photo or drawing into the tensor the models were trained on.

Users send photos of digits written on paper and drawings from a web canvas, not MNIST
tensors. MNIST's own recipe made each digit light on black, size-normalised into a 20x20 box
keeping its aspect ratio, then centred by its centre of mass in a 28x28 field; this module
does the same to any image Pillow reads, so that a 28x28 MNIST image passes through unchanged.

Pure numpy and Pillow: every step is a function that can be tested on its own.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image, ImageOps

from volume import IMAGE_SIZE, MNIST_MEAN, MNIST_STD

# What users upload. Pillow knows dozens of formats; every extra decoder is attack surface.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
DIGIT_BOX = 20  # MNIST fits each digit into 20x20 ...
# ... so a photo is analysed (paper, ink, crop) small. A JPEG decodes at the coarsest scale
# its decoder offers (1/2, 1/4, 1/8) that keeps the longest side at least DRAFT_SIDE, then is
# box-averaged to JPEG_WORK_SIZE at most: a digit that fills a tenth of the photo's side still
# spans 13 pixels or more, and ends up 20. A 12 MP photo decodes straight to 504x378 grey
# instead of 4032x3024 colour (`load`) and is analysed at 252x189; a 400x400 JPEG at 200x200.
# Other formats have no such scale: decoded whole, they are box-averaged to WORK_SIZE. Drawings
# sent as PNG, WebP or GIF keep their sharp strokes better at 512: at 256 the photo-like set's
# lost 0.2-0.3 points where its JPEGs lost none (bench/README.md).
DRAFT_SIDE = 129
JPEG_WORK_SIZE = 256
WORK_SIZE = 512
MIN_CONTRAST = 32  # ink must stand this far (of 255) from the paper to count as a digit
# The crop keeps the pixels with at least a quarter of the darkest stroke's ink: fainter ones
# away from the digit are paper texture and JPEG noise. MNIST's own digits crop the same.
CROP_LEVEL = 64
ORIENTATION = 0x0112  # the EXIF tag


class ImageError(ValueError):
    """An upload that cannot become a digit; the message tells the user what to send instead."""


class UndecodableImage(ImageError):
    pass


class ImageTooLarge(ImageError):
    pass


class NoDigit(ImageError):
    pass


def image_error(error: Exception, max_pixels: int) -> ImageError:
    """What Pillow raised on an upload, as an ImageError that tells the user what to send."""
    if isinstance(error, ImageError):
        return error
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageTooLarge(
            f"the image decodes to more than {max_pixels:,} pixels; send a smaller photo"
        )
    # Decoders raise many types (OSError, SyntaxError, ValueError, struct.error, ...) on
    # hostile bytes; every one of them means the same thing to the user.
    return UndecodableImage(
        f"the upload is not a readable image ({type(error).__name__}: {error}); "
        f"send a complete {', '.join(ACCEPTED_FORMATS)} file"
    )


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read an upload's header only, refusing formats we do not accept and images over
    `max_pixels` before a pixel is decoded; `load` decodes it. Cheap: tens of microseconds."""
    try:
        # Pillow checks the size too (the app makes its warning an error), but only against its
        # global cap.
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image is {width}x{height} pixels, over the limit of {max_pixels:,}; "
                "send a smaller photo"
            )
        return image
    except Exception as e:
        raise image_error(e, max_pixels) from None


def draft_size(width: int, height: int) -> tuple[int, int]:
    """The size to ask a JPEG decoder for, so that it scales by the most it can (1/2, 1/4 or
    1/8) while the longest side stays at least DRAFT_SIDE."""
    longest = max(width, height)
    # Pillow's draft scales by the largest of 8, 4, 2 that keeps both sides at least this.
    return max(1, width * DRAFT_SIDE // longest), max(1, height * DRAFT_SIDE // longest)


def load(image: Image.Image, max_pixels: int) -> Image.Image:
    """Decode the pixels of an image `open_image` opened, turned upright.

    A JPEG is decoded at the scale the analysis needs and in grey: libjpeg then skips the
    colour conversion, and at 1/8 scale most of the inverse DCT. A 12 MP phone photo costs
    what its entropy decoding costs, several times less than its full decode. Other formats
    have no such scale and decode whole.
    """
    try:
        if image.format == "JPEG":
            image.draft("L", draft_size(*image.size))
        image.load()
        # Phones store photos sideways plus an EXIF tag; turned in place. Pillow's own check
        # costs several microseconds even when there is nothing to turn (a 28x28 PNG takes
        # about 60 in all), so the tag is read first.
        if image.getexif().get(ORIENTATION, 1) != 1:
            ImageOps.exif_transpose(image, in_place=True)
        return image
    except Exception as e:
        raise image_error(e, max_pixels) from None


# The modes Pillow can box-average (`Image.reduce`) without a conversion first.
REDUCIBLE = ("L", "RGB", "RGBA", "LA", "I", "F")


def reduce(image: Image.Image) -> Image.Image:
    """Average blocks of pixels in Pillow so the longest side is at most WORK_SIZE (a JPEG's:
    JPEG_WORK_SIZE): on bytes, in one pass in C, before numpy sees the image. A mode Pillow
    cannot reduce is left for `shrink`."""
    work_size = JPEG_WORK_SIZE if image.format == "JPEG" else WORK_SIZE
    factor = -(-max(image.size) // work_size)
    if factor <= 1 or image.mode not in REDUCIBLE:
        return image
    return image.reduce(factor)


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an upload, refusing formats we do not accept and images over `max_pixels`."""
    return load(open_image(data, max_pixels), max_pixels)


def to_grey(image: Image.Image) -> np.ndarray:
    """Grey levels 0..255 as float32 [H,W], transparency flattened onto paper."""
    if image.mode == "L" and "transparency" not in image.info:  # grey already, as MNIST's PNGs
        return np.asarray(image, np.float32)
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
    """Average blocks of pixels so the longest side is at most `max_side`, for the images
    `reduce` left (palette and 16-bit ones)."""
    factor = -(-max(grey.shape) // max_side)
    if factor <= 1:
        return grey
    height, width = (grey.shape[0] // factor) * factor, (grey.shape[1] // factor) * factor
    blocks = grey[:height, :width].reshape(height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def border(grey: np.ndarray) -> np.ndarray:
    """The grey levels of the image's outermost pixels, each once, in `border_terms`' order."""
    if min(grey.shape) < 3:  # every pixel is on the border
        return grey.ravel()
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


@functools.lru_cache(maxsize=64)
def border_terms(height: int, width: int) -> np.ndarray:
    """[1, x/width, y/height] of each pixel `border` returns: the plane's terms, made once per
    image size (photos come in a few sizes)."""
    if min(height, width) < 3:
        rows, cols = np.indices((height, width))
        xs, ys = cols.ravel(), rows.ravel()
    else:
        sides = np.arange(1, height - 1)
        xs = np.concatenate([np.arange(width), np.arange(width), 0 * sides, 0 * sides + width - 1])
        ys = np.concatenate([np.zeros(width, int), np.full(width, height - 1), sides, sides])
    terms = np.stack([np.ones(len(xs)), xs / width, ys / height], axis=1)
    terms.flags.writeable = False  # shared by every call
    return terms


def fit_plane(terms: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The least-squares plane through `values`: its 3x3 normal equations, solved (a fraction
    of `lstsq`'s time), or `lstsq` where the points do not span a plane (one row, one column)."""
    try:
        return np.linalg.solve(terms.T @ terms, terms.T @ values)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(terms, values, rcond=None)[0]


def spread(residual: np.ndarray) -> float:
    """About 5 sigma of the noise, from the median absolute deviation."""
    return 5 * 1.4826 * float(np.median(residual))


def paper(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """The paper's grey level at every pixel, and the paper's noise (about 5 sigma).

    A photo's paper is rarely even: light falls off across the sheet. The image's border is
    paper, so a plane fitted to it (twice, the second time without the ink the border may
    touch) models the light; the spread of the border around it is the sensor's noise. The
    level broadcasts to the image's shape: one value when the paper is even.
    """
    height, width = grey.shape
    values = border(grey)
    if values.min() == values.max():  # an even border, as on MNIST's own digits: flat paper
        return np.full((1, 1), values[0], np.float32), 0.0
    values = values.astype(np.float64)
    terms = border_terms(height, width)
    plane = fit_plane(terms, values)
    residual = np.abs(values - terms @ plane)
    keep = residual <= spread(residual) + 1  # not the ink the border touches
    plane = fit_plane(terms[keep], values[keep])
    noise = spread(np.abs(values - terms @ plane))
    # The plane at every pixel, summed from a row and a column rather than from full grids.
    across = (plane[0] + plane[1] * np.arange(width) / width).astype(np.float32)
    down = (plane[2] * np.arange(height) / height).astype(np.float32)
    return across[None, :] + down[:, None], noise


def ink(grey: np.ndarray) -> np.ndarray:
    """How much ink is at each pixel, 0..255, on black: MNIST's polarity whatever the photo's.

    The ink is whichever side of the paper reaches further (dark pen on white paper, or chalk
    on a board); what stays within the paper's noise is paper.
    """
    level, noise = paper(grey)
    amount = level - grey  # darker than the paper; computed in place from here on
    if amount.max() <= -amount.min():  # the lighter side reaches further
        np.negative(amount, out=amount)
    amount -= noise
    np.maximum(amount, 0, out=amount)
    peak = float(amount.max())
    if peak < MIN_CONTRAST:
        raise NoDigit(
            "no digit found: the image is blank or its ink is too faint; "
            "send a photo of one dark digit on light paper (or light on dark)"
        )
    amount *= 255 / peak
    return amount


def mnist_form(amount: np.ndarray) -> np.ndarray:
    """Crop to the digit, fit it in 20x20 keeping its aspect, centre its mass in 28x28."""
    rows = np.flatnonzero(amount.max(axis=1) >= CROP_LEVEL)
    cols = np.flatnonzero(amount.max(axis=0) >= CROP_LEVEL)
    scale = DIGIT_BOX / max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    # The crop keeps one output pixel's worth around the digit for its faint edges: MNIST's
    # anti-aliased rims fall outside the box of its strong pixels but belong to the digit.
    margin = math.ceil(1 / scale)
    first_row, first_col = max(rows[0] - margin, 0), max(cols[0] - margin, 0)
    digit = amount[first_row : rows[-1] + 1 + margin, first_col : cols[-1] + 1 + margin]
    # A digit under 5 pixels (a dot) would grow its margin past the field: fit the whole crop.
    scale = min(scale, IMAGE_SIZE / max(digit.shape))
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))
    if size == (digit.shape[1], digit.shape[0]):  # the size it has: Pillow would only copy it
        fitted = digit.clip(0, None)
    else:
        fitted = np.asarray(
            Image.fromarray(digit, "F").resize(size, Image.Resampling.BILINEAR), np.float32
        ).clip(0, None)
    fitted *= 255 / fitted.max()  # a thin pen stroke shrunk to 20 pixels is as dark as MNIST's

    # The integer shift that puts the centre of mass on the field's centre, kept inside it.
    rows_mass, cols_mass = (
        fitted.sum(axis=1, dtype=np.float64),
        fitted.sum(axis=0, dtype=np.float64),
    )
    mass = float(rows_mass.sum())
    centre_y = float(rows_mass @ np.arange(len(rows_mass))) / mass
    centre_x = float(cols_mass @ np.arange(len(cols_mass))) / mass
    top = min(max(round(IMAGE_SIZE / 2 - centre_y), 0), IMAGE_SIZE - fitted.shape[0])
    left = min(max(round(IMAGE_SIZE / 2 - centre_x), 0), IMAGE_SIZE - fitted.shape[1])
    field = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    field[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return field


def in_mnist_form(grey: np.ndarray) -> bool:
    """Whether an image already is what `ink` and `mnist_form` make of MNIST's digits: 28x28,
    light ink on black, the strong pixels spanning 20 pixels, the centre of mass within half a
    pixel of the field's centre. 98.9 % of MNIST's own test digits are.
    """
    if grey.shape != (IMAGE_SIZE, IMAGE_SIZE):
        return False
    # 28 values a side: plain Python on them is cheaper than more numpy calls.
    rows_max, cols_max = grey.max(axis=1).tolist(), grey.max(axis=0).tolist()
    if rows_max[0] or rows_max[-1] or cols_max[0] or cols_max[-1]:  # not on black: paper
        return False
    rows = [i for i, level in enumerate(rows_max) if level >= CROP_LEVEL]
    cols = [i for i, level in enumerate(cols_max) if level >= CROP_LEVEL]
    if not rows or max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 != DIGIT_BOX:
        return False
    rows_mass, cols_mass = grey.sum(axis=1).tolist(), grey.sum(axis=0).tolist()
    mass = sum(rows_mass)
    centre_y = sum(i * m for i, m in enumerate(rows_mass)) / mass
    centre_x = sum(i * m for i, m in enumerate(cols_mass)) / mass
    return max(abs(IMAGE_SIZE / 2 - centre_y), abs(IMAGE_SIZE / 2 - centre_x)) <= 0.5


def normalise(field: np.ndarray, peak: float = 255) -> np.ndarray:
    """A 28x28 field of 0..`peak` as the models' input [1,28,28]: its peak stretched to 255,
    then normalised as in training."""
    scaled = field * (1 / (peak * MNIST_STD)) - MNIST_MEAN / MNIST_STD
    return scaled.astype(np.float32, copy=False)[None]


def preprocess_image(image: Image.Image, max_pixels: int) -> np.ndarray:
    """The whole recipe from an image `open_image` opened to one model input [1,28,28] float32.

    An image already in MNIST's form (`in_mnist_form`) only has its contrast stretched, as
    `ink` would: the rest of the recipe gives the same tensor for 99.5 % of MNIST's test
    digits (it moves the others by one pixel, rounding the centring), and skipping it cuts the
    CPU time of a request for a 28x28 digit by about a quarter.
    """
    grey = to_grey(reduce(load(image, max_pixels)))
    if in_mnist_form(grey):
        return normalise(grey, peak=float(grey.max()))
    return normalise(mnist_form(ink(shrink(grey))))


def preprocess(data: bytes, max_pixels: int) -> np.ndarray:
    """The whole recipe: upload bytes to one model input [1,28,28] float32."""
    return preprocess_image(open_image(data, max_pixels), max_pixels)
