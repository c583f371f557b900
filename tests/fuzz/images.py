"""schemathesis hooks: the uploads the API's schema calls `binary`, drawn as real images.

The schema can say "an image" but not "an image of a digit", so without these the fuzzer would
send random bytes, which the API rightly answers 422 (its own tests cover those: test_api's
`test_no_bytes_make_a_500`). With them, every generated upload is a PNG or JPEG of one stroke
(any size, grey or colour, dark on light or light on dark) that decoding, preprocessing and
inference must answer with a prediction. Loaded by schemathesis through `hooks` in
tests/fuzz/schemathesis.toml.
"""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image, ImageDraw


@st.composite
def stroke_images(draw: st.DrawFn, formats: tuple[str, ...] = ("PNG", "JPEG")) -> bytes:
    width, height = draw(st.integers(28, 320)), draw(st.integers(28, 320))
    paper, ink = draw(st.integers(170, 255)), draw(st.integers(0, 90))
    if draw(st.booleans()):  # chalk on a board, as MNIST's own digits are
        paper, ink = 255 - paper, 255 - ink
    image = Image.new("L", (width, height), paper)
    corner = st.tuples(st.floats(0.25, 0.75), st.floats(0.25, 0.75))
    points = draw(st.lists(corner, min_size=2, max_size=6))
    line = [(x * width, y * height) for x, y in points]
    ImageDraw.Draw(image).line(line, fill=ink, width=max(2, min(width, height) // 10))
    if draw(st.booleans()):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=draw(st.sampled_from(formats)))
    return buffer.getvalue()


schemathesis.openapi.format("binary", stroke_images())  # each multipart `file`
schemathesis.openapi.media_type("image/png", stroke_images(("PNG",)))  # a raw body
schemathesis.openapi.media_type("image/jpeg", stroke_images(("JPEG",)))
