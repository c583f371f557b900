"""The MNIST recipe applied to real images: each step of `service.images` on its own."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from service import images
from tests.service.photos import encode, load_mnist, phone_photo

MANY = 10**8  # a pixel cap no test image reaches


def stroke(height: int, width: int, top: int, left: int, size: int = 28) -> np.ndarray:
    """A light bar on black, the given size and place in a size x size field."""
    field = np.zeros((size, size), np.uint8)
    field[top : top + height, left : left + width] = 255
    return field


def field_of(data: bytes) -> np.ndarray:
    return images.mnist_form(images.ink(images.shrink(images.to_grey(images.decode(data, MANY)))))


def centre_of_mass(field: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(field.shape)
    return float((ys * field).sum() / field.sum()), float((xs * field).sum() / field.sum())


def test_mnist_digits_pass_through_unchanged(mnist_dir) -> None:
    digits = load_mnist(mnist_dir)[0][:300]
    fields = np.stack([field_of(encode(Image.fromarray(d), "PNG")) for d in digits])
    exact = np.abs(fields - digits).max(axis=(1, 2)) < 1
    assert exact.mean() > 0.85  # the others moved by one pixel: MNIST's centring rounds too
    assert np.abs(fields - digits).mean() < 3  # of 255


def test_mnist_digits_take_the_short_way_to_the_same_tensor(mnist_dir) -> None:
    """`preprocess` skips the photo recipe for images already in MNIST's form."""
    digits = load_mnist(mnist_dir)[0][:300]
    uploads = [encode(Image.fromarray(d), "PNG") for d in digits]
    short = [images.in_mnist_form(images.to_grey(images.decode(u, MANY))) for u in uploads]
    assert np.mean(short) > 0.95
    full = np.stack([images.normalise(field_of(u)) for u in uploads])
    tensors = np.stack([images.preprocess(u, MANY) for u in uploads])
    same = np.abs(tensors - full).max(axis=(1, 2, 3)) < 1e-5
    assert same.mean() > 0.98


@pytest.mark.parametrize(
    "field",
    [
        stroke(8, 8, 10, 10),  # too small: it is fitted into 20x20
        stroke(20, 6, 0, 10),  # touching the border
        stroke(20, 6, 2, 3),  # off centre
        255 - stroke(20, 6, 4, 11),  # dark on light
    ],
    ids=["small", "on the border", "off centre", "dark on light"],
)
def test_other_28x28_images_take_the_whole_recipe(field: np.ndarray) -> None:
    assert not images.in_mnist_form(field.astype(np.float32))
    data = encode(Image.fromarray(field), "PNG")
    assert np.array_equal(images.preprocess(data, MANY), images.normalise(field_of(data)))


def test_normalise_matches_training() -> None:
    field = np.zeros((28, 28), np.float32)
    field[0, 0] = 255
    tensor = images.normalise(field)
    assert tensor.shape == (1, 28, 28) and tensor.dtype == np.float32
    assert tensor[0, 0, 0] == pytest.approx((1 - 0.1307) / 0.3081)
    assert tensor[0, 1, 1] == pytest.approx(-0.1307 / 0.3081)


@pytest.mark.parametrize(
    ("height", "width", "canvas", "fitted"),
    [
        (200, 40, 400, (20, 4)),  # tall: the height becomes 20, the aspect stays
        (30, 90, 300, (7, 20)),  # wide
        (8, 8, 28, (20, 20)),  # small: scaled up
    ],
)
def test_the_digit_is_fitted_into_20x20_keeping_its_aspect(
    height: int, width: int, canvas: int, fitted: tuple[int, int]
) -> None:
    field = field_of(encode(Image.fromarray(stroke(height, width, 5, 7, canvas)), "PNG"))
    rows = np.flatnonzero(field.max(axis=1) > 64)
    cols = np.flatnonzero(field.max(axis=0) > 64)
    assert (len(rows), len(cols)) == pytest.approx(fitted, abs=1)


@pytest.mark.parametrize(("top", "left"), [(0, 0), (300, 10), (150, 320)])
def test_an_off_centre_digit_is_centred_by_its_mass(top: int, left: int) -> None:
    field = field_of(encode(Image.fromarray(stroke(60, 20, top, left, 400)), "PNG"))
    assert centre_of_mass(field) == pytest.approx((14, 14), abs=0.6)


def test_dark_ink_on_light_paper_is_inverted() -> None:
    light_on_dark = stroke(100, 20, 40, 60, 200)
    dark_on_light = 255 - light_on_dark
    assert np.array_equal(
        field_of(encode(Image.fromarray(dark_on_light), "PNG")),
        field_of(encode(Image.fromarray(light_on_dark), "PNG")),
    )


def test_uneven_light_and_grey_paper_are_paper() -> None:
    shade = np.linspace(230, 150, 300)[None, :].repeat(300, axis=0)  # light falls off
    photo = shade.copy()
    photo[60:240, 140:170] = 40  # a pen stroke
    field = field_of(encode(Image.fromarray(photo.astype(np.uint8)), "PNG"))
    assert field.max() == pytest.approx(255)
    rows = np.flatnonzero(field.max(axis=1) > 64)
    assert len(rows) == pytest.approx(20, abs=1)  # only the stroke, not the shaded paper


@pytest.mark.parametrize("colour", [0, 255], ids=["black strokes", "white strokes"])
def test_transparency_is_flattened_onto_paper(colour: int) -> None:
    """A web canvas: strokes on fully transparent black."""
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[40:240, 120:160] = (colour, colour, colour, 255)
    drawn = field_of(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    reference = field_of(encode(Image.fromarray(stroke(200, 40, 40, 120, 280)), "PNG"))
    assert np.array_equal(drawn, reference)


def test_colour_ink_counts_as_ink() -> None:
    rgb = np.full((200, 200, 3), 250, np.uint8)
    rgb[30:170, 90:110] = (30, 40, 160)  # blue pen
    field = field_of(encode(Image.fromarray(rgb), "JPEG", quality=80))
    assert centre_of_mass(field) == pytest.approx((14, 14), abs=0.6)
    assert field.max() == pytest.approx(255)


@pytest.mark.parametrize(("orientation", "stored_rotation"), [(3, 180), (6, 90), (8, 270)])
def test_exif_orientation_is_honoured(orientation: int, stored_rotation: int) -> None:
    upright = Image.fromarray(255 - stroke(120, 30, 20, 20, 200))  # an L-ish bar, top-left
    upright.paste(0, (20, 120, 110, 140))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    upright.rotate(stored_rotation, expand=True).save(buffer, "PNG", exif=exif)
    assert np.array_equal(field_of(buffer.getvalue()), field_of(encode(upright, "PNG")))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_every_accepted_format_decodes(image_format: str) -> None:
    picture = Image.fromarray(255 - stroke(120, 30, 40, 80, 200)).convert("RGB")
    field = field_of(encode(picture, image_format))
    assert centre_of_mass(field) == pytest.approx((14, 14), abs=0.6)


def test_sixteen_bit_greys_are_scaled_not_clipped() -> None:
    deep = (stroke(100, 20, 50, 90, 200).astype(np.uint16) * 257).astype(np.uint16)
    field = field_of(encode(Image.fromarray(deep), "PNG"))
    assert field.max() == pytest.approx(255)


@pytest.mark.parametrize(
    ("size", "image_format", "mode", "decoded", "analysed"),
    [
        ((4032, 3024), "JPEG", "RGB", (504, 378), (252, 189)),  # the decoder's 1/8, then 1/2
        ((8000, 6000), "JPEG", "RGB", (1000, 750), (250, 188)),
        ((1600, 1200), "JPEG", "RGB", (200, 150), (200, 150)),
        ((400, 400), "JPEG", "RGB", (200, 200), (200, 200)),
        ((250, 250), "JPEG", "RGB", (250, 250), (250, 250)),  # small enough already
        ((3000, 2000), "PNG", "RGB", (3000, 2000), (500, 334)),  # no draft: reduced in Pillow
        ((28, 28), "PNG", "L", (28, 28), (28, 28)),
    ],
)
def test_photos_are_decoded_and_analysed_at_the_size_the_digit_needs(
    size: tuple[int, int],
    image_format: str,
    mode: str,
    decoded: tuple[int, int],
    analysed: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A JPEG decodes at the coarsest scale keeping DRAFT_SIDE and is analysed at
    JPEG_WORK_SIZE at most; other formats at WORK_SIZE at most."""
    # Pillow's own cap is global, and a test of the app before this one may have lowered it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    data = encode(Image.new(mode, size, "white"), image_format)
    image = images.load(images.open_image(data, MANY), MANY)
    assert image.size == decoded
    if image_format == "JPEG":
        assert image.mode == "L"  # straight to grey: no colour conversion
    assert images.reduce(image).size == analysed


def test_what_pillow_cannot_reduce_is_shrunk_in_numpy() -> None:
    palette = Image.new("RGB", (1200, 800), "white").convert("P", palette=Image.Palette.ADAPTIVE)
    image = images.load(images.open_image(encode(palette, "GIF"), MANY), MANY)
    assert images.reduce(image).size == (1200, 800)
    assert images.shrink(images.to_grey(image)).shape == (266, 400)  # 1/3: 1200 over 512
    assert images.shrink(np.zeros((28, 28), np.float32)).shape == (28, 28)


# EXIF orientation -> how to turn the stored pixels upright.
UPRIGHT = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_270,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("orientation", UPRIGHT)
def test_a_sideways_phone_photo_is_turned_upright_at_draft_scale(
    mnist_dir, orientation: int
) -> None:
    """A JPEG decoded at 1/8 scale is turned as its EXIF tag says, and reads as the same photo
    decoded whole, turned upright by Pillow and sent as PNG."""
    digit = load_mnist(mnist_dir)[0][orientation]
    data = phone_photo(digit, np.random.default_rng(orientation), (1600, 1200), orientation, 85)
    stored = Image.open(io.BytesIO(data))
    stored.draft("L", (200, 150))
    stored.load()
    method = UPRIGHT[orientation]
    turned = stored.transpose(method) if method is not None else stored
    loaded = images.load(images.open_image(data, MANY), MANY)
    assert np.array_equal(np.asarray(loaded), np.asarray(turned))

    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    field = images.preprocess(data, MANY)[0]
    # Decoded at another scale, the field differs pixel by pixel (and the centring may round
    # one pixel the other way), but not as a digit.
    expected = images.preprocess(encode(upright, "PNG"), MANY)[0].ravel()
    similarity = max(
        np.corrcoef(np.roll(field, (dy, dx), (0, 1)).ravel(), expected)[0, 1]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )
    assert similarity > 0.9


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # as the app has it
@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", images.UndecodableImage),
        (b"not an image", images.UndecodableImage),
        (b"%PDF-1.4\n%", images.UndecodableImage),
        (encode(Image.new("L", (64, 64), 255), "PNG"), images.NoDigit),
        (encode(Image.new("L", (64, 64), 0), "PNG"), images.NoDigit),
        (encode(Image.new("L", (64, 64), 128), "JPEG"), images.NoDigit),
        (encode(Image.new("L", (2000, 1001)), "PNG"), images.ImageTooLarge),
    ],
)
def test_what_is_not_a_digit_is_refused(data: bytes, error: type[images.ImageError]) -> None:
    with pytest.raises(error) as raised:
        images.preprocess(data, max_pixels=2_000_000)
    assert "send" in str(raised.value)  # every message says what to do


def test_formats_outside_the_list_are_refused() -> None:
    tga = io.BytesIO()
    Image.new("L", (32, 32)).save(tga, "TGA")
    with pytest.raises(images.UndecodableImage, match="PNG, JPEG"):
        images.decode(tga.getvalue(), MANY)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 3), (4, 1), (2, 2), (3, 5)])
def test_a_light_dot_on_black_fits_the_field(height: int, width: int) -> None:
    """A dot or a dash, scaled up into the 20x20 box, stays inside 28x28 (it was a 500)."""
    grey = np.zeros((40, 40), np.uint8)
    grey[10 : 10 + height, 20 : 20 + width] = 255
    x = images.preprocess(encode(Image.fromarray(grey), "PNG"), MANY)
    assert x.shape == (1, 28, 28) and np.isfinite(x).all()


@pytest.mark.parametrize(("side", "dot"), [(28, 1), (28, 2), (28, 4), (100, 3), (320, 1)])
def test_a_digit_of_a_few_pixels_fits_the_field(side: int, dot: int) -> None:
    """Found by schemathesis (tests/fuzz): a dot's margin, scaled up with it, outgrew 28x28."""
    pixels = np.full((side, side), 255, np.uint8)
    pixels[10 : 10 + dot, 12 : 12 + dot] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    tensor = images.preprocess(buffer.getvalue(), 10**7)
    assert tensor.shape == (1, 28, 28) and np.isfinite(tensor).all()
