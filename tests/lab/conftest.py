"""Fixtures of the browser tests: a volume filled by the real trainer, the real app on a real
uvicorn serving it, and Debian's Chromium driven by Playwright (nothing downloaded).

The volume trains every step but the first (left untrained, so the page shows its command),
briefly, on MNIST subsets: the middle steps on 1,500 images for one epoch (their cards and
charts need a model, not a good one), the final step on 6,000 images for two epochs, enough
for it to read digits drawn on the canvas. `LAB_MODELS_DIR=<a volume>` serves that volume
instead of training one (e.g. `make demo`'s, for the README's screenshots).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import volume
from tests.conftest import ROOT
from tests.servers import serve
from volume import FINAL_STEP, OPTIONAL_FILES, STEP_SLUGS

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package `chromium` (.ci/run installs it)
# The flags that work on this project's machines: no sandbox as root, and none of Chromium's
# own connections, which a closed network refuses (/work/.library/env/machines/python.md).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FINAL = FINAL_STEP  # the assignment's final step
UNTRAINED = STEP_SLUGS[0]  # the slowest to train; its card shows the command instead
SCREENSHOTS = Path(os.environ.get("LAB_SCREENSHOTS", ROOT / "build" / "lab-screenshots"))

pytest.importorskip("playwright", reason="the browser tests need the test extra (playwright)")


def trainer(out: Path, mnist_dir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """A trainer run into `out`, its output into `log` (a file: a pipe nobody reads while the
    other run is waited for could fill and stop it)."""
    command = [sys.executable, "-m", "trainer", "run", "--quiet", "--out", str(out), *args]
    command += ["--data-dir", str(mnist_dir)]
    with log.open("wb") as sink:
        return subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def lab_volume(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    given = os.environ.get("LAB_MODELS_DIR")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("lab") / "models"
    started = time.perf_counter()
    middle = ",".join(s for s in STEP_SLUGS if s not in (UNTRAINED, FINAL))
    # Two trainers side by side into the one volume, one process each (--jobs 1): each loads
    # torch and the ONNX exporter once, which costs more than these steps' training here.
    logs = [out.parent / "middle.log", out.parent / "final.log"]
    runs = [
        trainer(out, mnist_dir, logs[0], "--steps", middle, "--limit", "1500", "--epochs", "1", "--jobs", "1"),
        trainer(out, mnist_dir, logs[1], "--steps", FINAL, "--limit", "6000", "--epochs", "2", "--jobs", "1"),
    ]  # fmt: skip
    for run, log in zip(runs, logs, strict=True):
        assert run.wait(timeout=1500) == 0, log.read_text()[-4000:]
    print(f"\nlab volume trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out


@pytest.fixture(scope="session")
def old_volume(lab_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same volume as if published before the lab: no mistakes.json, no samples.json."""
    copy = tmp_path_factory.mktemp("old") / "models"
    shutil.copytree(lab_volume, copy, ignore=shutil.ignore_patterns("checkpoints", *OPTIONAL_FILES))
    return copy


def uvicorn(models_dir: Path, log: Path, **settings: str) -> Iterator[str]:
    """The app on `models_dir`; `settings` as environment variables (poll_seconds="0.2")."""
    env = os.environ | {"MODELS_DIR": str(models_dir), "PYTHONPATH": str(ROOT)}
    env |= {name.upper(): value for name, value in settings.items()}
    command = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1"]
    with serve(lambda port: [*command, "--port", str(port)], env, ROOT, log) as (client, _):
        yield str(client.base_url)


@pytest.fixture(scope="session")
def lab_url(lab_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from uvicorn(lab_volume, tmp_path_factory.mktemp("logs") / "uvicorn.log")


@pytest.fixture(scope="session")
def old_url(old_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from uvicorn(old_volume, tmp_path_factory.mktemp("logs") / "uvicorn-old.log")


@pytest.fixture(scope="session")
def empty_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service on a volume nothing was published into: for pages that need no model."""
    folder = tmp_path_factory.mktemp("empty")
    yield from uvicorn(folder / "models", folder / "uvicorn.log")


# Package-scoped: sync_playwright runs an event loop in this thread until it stops, and later
# tests (tests/service/test_slow_clients.py) call asyncio.run, which a running loop forbids.
@pytest.fixture(scope="package")
def browser():
    if not CHROMIUM.exists():
        message = "Chromium not found: apt-get install chromium chromium-driver (as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@dataclass
class Problems:
    """What a page must never show: console errors, uncaught exceptions, failed requests."""

    seen: list[str] = field(default_factory=list)

    def watch(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.seen.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.seen.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: self.seen.append(f"failed: {r.method} {r.url}"))
        page.on(
            "response",
            lambda r: r.status >= 400 and self.seen.append(f"HTTP {r.status}: {r.url}"),
        )


def open_page(browser, url: str, **context_options):
    """A fresh context and page at `url`, ready (steps, journey and samples loaded)."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    problems = Problems()
    problems.watch(page)
    page.goto(url)
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=60_000)
    return context, page, problems


@pytest.fixture
def desktop(browser, lab_url: str):
    context, page, problems = open_page(browser, lab_url, viewport={"width": 1280, "height": 900})
    yield page
    context.close()
    assert problems.seen == []


@pytest.fixture
def phone(browser, lab_url: str):
    context, page, problems = open_page(
        browser,
        lab_url,
        viewport={"width": 360, "height": 740},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    yield page
    context.close()
    assert problems.seen == []


# --- The live view: a volume being trained into -------------------------------------------

HELD = "batchnorm"  # trained in the lab volume, held back from a live one: published in a test


def republish(source: Path, target: Path, step: str) -> str:
    """Publish `source`'s current version of `step` into `target`, as the trainer would."""
    current = volume.read_current(source, step)
    assert current is not None, f"{step} is not published in {source}"
    return volume.publish(
        target, step, current.model_bytes, current.summary, current.metrics,
        mistakes=current.mistakes, samples=current.samples,
    )  # fmt: skip


@dataclass
class LiveServer:
    url: str
    models_dir: Path  # tests write progress files and publish here; the service reads it
    source: Path  # the lab volume, where HELD's version comes from


@pytest.fixture
def live_server(lab_volume: Path, tmp_path: Path) -> Iterator[LiveServer]:
    """The lab volume's versions, republished without HELD and without progress files, served
    by the app polling every 0.2 s: a fresh one per test, as each test trains into it."""
    models_dir = tmp_path / "models"
    for step in volume.read_index(lab_volume).steps:
        if step != HELD:
            republish(lab_volume, models_dir, step)
    server = uvicorn(models_dir, tmp_path / "uvicorn.log", poll_seconds="0.2")
    try:
        yield LiveServer(next(server), models_dir, lab_volume)
    finally:
        server.close()  # stops the process
