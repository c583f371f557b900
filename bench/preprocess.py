"""Preprocessing benchmark: our preprocessing of each kind of upload next to Pillow's full decode.

    python bench/preprocess.py [--rounds 15] [--seconds 0.2] [--before REV] [--phones 8]

A photo's floor is decoding it: the preprocessing (`service.images.preprocess`, what /predict
runs on each upload) should cost a fraction of what Pillow takes to decode the same file whole
(`Image.open(...).load()`, to its own mode: RGB for a JPEG), since the digit ends up 20x20;
its floor is the decoder's smallest draft (a JPEG at 1/8 scale in grey: the entropy decoding
that no scale skips), also timed.
Per kind of upload (a 28x28 MNIST PNG, the 400x400 photo-like JPEG of bench/serve.py, a
1600x1200 and a 4032x3024 phone photo of a digit on paper (tests/service/photos.py), a 280x280
PNG canvas drawing), four functions are timed in this process, taking turns: the full decode,
the draft decode, our preprocessing as it is, and our preprocessing as it was at --before (a git revision, by
default the one before issue 17 made it work at the resolution the digit needs; loaded from
git, so the comparison is in the same run). Each turn runs one function back to back for
--seconds and keeps its median call; the order rotates every round and every number is the
median of --rounds turns. MNIST comes from $MNIST_DIR (default ../shared/datasets/mnist).

Then --phones more 12 MP phone photos (qualities spread over 80 to 95, every EXIF orientation)
are timed the same way but for `before`: whether a 12 MP photo can reach 0.15 of its full decode
is a question of its draft, the file's floor, so the floor is shown over the photos the issue
names, not on one.

It prints markdown tables, whether each target holds, and as its last line `ratio: X.XX`: our
time on the 4032x3024 photo over its full decode. Targets: the 12 MP photo <= 0.15x its full
decode; the 400x400 JPEG <= 2x; the 28x28 PNG no slower than before (<= 1.00x, to the noise
of a median: see the README).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.serve import cpu_name, photo_like  # noqa: E402
from service import images  # noqa: E402
from service.app import keep_freed_memory  # noqa: E402
from tests.service.photos import (  # noqa: E402
    PHONE_QUALITY,
    PHONE_SIZE,
    encode,
    load_mnist,
    phone_photo,
)

# The last commit whose preprocessing decoded photos at up to 1024 pixels a side in colour.
BEFORE_REV = "f8d6b4d"
MAX_PIXELS = 25_000_000  # the service's default MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class Upload:
    label: str
    data: bytes


def canvas_drawing(digit: np.ndarray, size: int = 280) -> bytes:
    """What the page's canvas sends: black strokes on transparent black, as PNG."""
    alpha = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    rgba = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    rgba.putalpha(alpha)
    return encode(rgba, "PNG")


def make_uploads(digits: np.ndarray) -> list[Upload]:
    rng = np.random.default_rng(0)
    return [
        Upload("28x28 PNG", encode(Image.fromarray(digits[0]), "PNG")),
        Upload("400x400 JPEG", photo_like(digits[0])),
        Upload("1600x1200 photo", phone_photo(digits[1], rng, (1600, 1200), 1, 90)),
        # Stored sideways with orientation 6, as phones store a portrait shot.
        Upload("4032x3024 photo", phone_photo(digits[2], rng, (4032, 3024), 6, 90)),
        Upload("PNG canvas drawing", canvas_drawing(digits[3])),
    ]


def images_at(rev: str) -> ModuleType:
    """`service/images.py` as it was at git revision `rev`, imported as its own module."""
    source = subprocess.run(
        ["git", "show", f"{rev}:service/images.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as file:
        file.write(source)
    spec = importlib.util.spec_from_file_location(f"images_at_{rev}", file.name)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.unlink(file.name)
    return module


def full_decode(data: bytes) -> None:
    Image.open(io.BytesIO(data)).load()


def draft_decode(data: bytes) -> None:
    """The least a decoder can do: a JPEG's smallest draft (1/8 scale, grey), whose cost is
    mostly the entropy decoding no scale avoids; other formats decode whole."""
    image = Image.open(io.BytesIO(data))
    image.draft("L", (image.width // 8, image.height // 8))
    image.load()


def median_call(function: Callable[[], object], seconds: float) -> float:
    """The median time of one call, calling `function` back to back for about `seconds`."""
    times: list[float] = []
    until = time.perf_counter() + seconds
    while (started := time.perf_counter()) < until or len(times) < 3:
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def take_turns(
    functions: dict[str, Callable[[bytes], object]],
    data: bytes,
    rounds: int,
    seconds: float,
    skip: str = "",
) -> dict[str, float]:
    """Each function's median call on `data`, the functions taking turns for `rounds` rounds
    in an order that rotates every round, so that a busy moment of the machine falls on each."""
    names = [name for name in functions if name != skip]
    for name in names:
        functions[name](data)  # warm up
    turns: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            turns[name].append(median_call(partial(functions[name], data), seconds))
    return {name: statistics.median(t) for name, t in turns.items()}


@dataclass(frozen=True)
class PhonePhoto:
    data: bytes
    quality: int
    orientation: int


def phone_photos(digits: np.ndarray, count: int) -> list[PhonePhoto]:
    """`count` 12 MP phone photos as the photo-like set makes them, their JPEG qualities spread
    evenly over the set's 80 to 95 and their EXIF orientations taking turns, so that the floor
    is measured over the photos the issue names rather than on one."""
    rng = np.random.default_rng(1)
    photos = []
    for i in range(count):
        low, high = PHONE_QUALITY
        quality = round(low + (high - low) * i / max(count - 1, 1))
        orientation = (1, 6, 3, 8)[i % 4]
        data = phone_photo(digits[10 + i], rng, orientation=orientation, quality=quality)
        photos.append(PhonePhoto(data, quality, orientation))
    return photos


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_mnist = os.environ.get("MNIST_DIR", str(ROOT.parent / "shared/datasets/mnist"))
    parser.add_argument("--mnist-dir", type=Path, default=Path(default_mnist))
    parser.add_argument("--rounds", type=int, default=15, help="turns of each function")
    parser.add_argument("--seconds", type=float, default=0.2, help="of calls per turn")
    parser.add_argument("--before", default=BEFORE_REV, help="the git revision to compare with")
    parser.add_argument(
        "--phones", type=int, default=8, help="more 12 MP photos, timed for the floor alone"
    )
    args = parser.parse_args()

    # As the service does at start-up: freed arrays stay with the process for the next call,
    # rather than being mapped fresh from the kernel each time (page faults: service/app.py).
    keep_freed_memory()
    digits = load_mnist(args.mnist_dir, "t10k")[0]
    uploads = make_uploads(digits)
    before = images_at(args.before)
    functions: dict[str, Callable[[bytes], object]] = {
        "decode": full_decode,
        "draft": draft_decode,
        "now": partial(images.preprocess, max_pixels=MAX_PIXELS),
        "before": partial(before.preprocess, max_pixels=MAX_PIXELS),
    }
    results: dict[str, dict[str, float]] = {}
    for upload in uploads:
        results[upload.label] = take_turns(functions, upload.data, args.rounds, args.seconds)
        print(f"{upload.label} done", file=sys.stderr, flush=True)
    # The phones are timed without `before`: it is the floor that is in question, not the gain.
    phones = [
        (phone, take_turns(functions, phone.data, args.rounds, args.seconds, skip="before"))
        for phone in phone_photos(digits, args.phones)
    ]

    print(
        f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores; Pillow {Image.__version__}; "
        f"median of {args.rounds} turns of {args.seconds:g} s; before = {args.before}"
    )
    print()
    print(
        "| upload | bytes | Pillow full decode ms | 1/8 grey draft ms | ours before ms "
        "| ours now ms | now / full decode | before / full decode | now / draft | now / before |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for upload in uploads:
        r = results[upload.label]
        draft = f"{r['draft'] * 1e3:.3f}" if upload.data[:2] == b"\xff\xd8" else "-"
        print(
            f"| {upload.label} | {len(upload.data):,} | {r['decode'] * 1e3:.3f} | {draft} "
            f"| {r['before'] * 1e3:.3f} | {r['now'] * 1e3:.3f} | {r['now'] / r['decode']:.2f} "
            f"| {r['before'] / r['decode']:.2f} | {r['now'] / r['draft']:.2f} "
            f"| {r['now'] / r['before']:.2f} |"
        )
    print()

    if phones:
        print(
            f"{len(phones)} more {PHONE_SIZE[0]}x{PHONE_SIZE[1]} phone photos "
            "(tests/service/photos.py: uneven light, grain, EXIF orientation), "
            f"JPEG quality {PHONE_QUALITY[0]} to {PHONE_QUALITY[1]}:"
        )
        print()
        print(
            "| quality | EXIF orientation | bytes | Pillow full decode ms | 1/8 grey draft ms "
            "| ours now ms | draft / full decode | now / full decode |"
        )
        print("|--:|--:|--:|--:|--:|--:|--:|--:|")
        for phone, r in phones:
            print(
                f"| {phone.quality} | {phone.orientation} | {len(phone.data):,} "
                f"| {r['decode'] * 1e3:.3f} | {r['draft'] * 1e3:.3f} | {r['now'] * 1e3:.3f} "
                f"| {r['draft'] / r['decode']:.2f} | {r['now'] / r['decode']:.2f} |"
            )
        print()
        floors = sorted(r["draft"] / r["decode"] for _, r in phones)
        ours = sorted(r["now"] / r["decode"] for _, r in phones)
        print(
            f"phone photos: the draft alone costs {floors[0]:.2f} to {floors[-1]:.2f} of the "
            f"full decode (median {statistics.median(floors):.2f}), ours {ours[0]:.2f} to "
            f"{ours[-1]:.2f} (median {statistics.median(ours):.2f}); "
            f"{sum(f <= 0.15 for f in floors)} of {len(floors)} have a draft within 0.15"
        )
        print()

    def ratio(label: str, over: str) -> float:
        return results[label]["now"] / results[label][over]

    photo, jpeg = ratio("4032x3024 photo", "decode"), ratio("400x400 JPEG", "decode")
    png = ratio("28x28 PNG", "before")
    checks = [
        (f"4032x3024 photo: now / full decode {photo:.2f} <= 0.15", photo <= 0.15),
        (f"400x400 JPEG: now / full decode {jpeg:.2f} <= 2.00", jpeg <= 2),
        (f"28x28 PNG: now / before {png:.3f} <= 1.00", png <= 1),
    ]
    for text, holds in checks:
        print(f"target {'holds' if holds else 'FAILS'}: {text}")
    print(f"ratio: {photo:.2f}")


if __name__ == "__main__":
    main()
