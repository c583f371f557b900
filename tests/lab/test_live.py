"""The training, live, in a real Chromium: the page follows progress files as they change on
the served volume (written here with the volume's own `write_progress`, and by a real trainer),
and when the step is published its answer card appears and the input is answered again, all
without reloading. The page fixtures check for console errors and failed requests throughout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.lab.conftest import HELD, SCREENSHOTS, LiveServer, open_page, republish
from tests.lab.test_page import UP_TO_DATE
from volume import STEPS_BY_SLUG, EpochMetrics
from volume.progress import HEARTBEAT_SECONDS, StepProgress, now_iso, write_progress

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PHONE = {
    "viewport": {"width": 360, "height": 740},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
NUMBER = STEPS_BY_SLUG[HELD].number


def epoch(n: int, accuracy: float) -> EpochMetrics:
    """An epoch's metrics, the loss following the accuracy (as a real run's roughly does)."""
    return EpochMetrics(
        epoch=n, train_loss=(101.5 - accuracy) / 12, train_accuracy=accuracy - 1.2,
        test_loss=(100.5 - accuracy) / 12, test_accuracy=accuracy, lr=0.05, seconds=20.0,
    )  # fmt: skip


def progress(step: str = HELD, **fields: object) -> StepProgress:
    values: dict[str, object] = {
        "step": step, "host": "trainer", "pid": 1, "started_at": now_iso(),
        "updated_at": now_iso(), "epochs": 3, "epoch": 1, "fraction": 0.0, "history": [],
        "elapsed_seconds": 1.0, "eta_seconds": 60.0,
    }  # fmt: skip
    return StepProgress.model_validate(values | fields)


def live_state(page, step: str = HELD) -> dict:
    """What the page shows of `step`: its state, bar, curve points; and of its card."""
    return page.evaluate(
        """([step, number]) => {
          const row = document.querySelector(`.live-step[data-step="${step}"]`);
          const chart = Chart.getChart('live-acc');
          const curve = chart?.data.datasets.find((d) => d.label === `${number} ${step}`);
          const card = document.querySelector(`.card[data-step="${step}"]`);
          return {
            shown: !document.querySelector('#live').hidden,
            state: row?.dataset.state ?? null,
            bar: row ? Number(row.querySelector('[role=progressbar]').getAttribute('aria-valuenow')) : null,
            facts: row?.querySelector('.live-facts').textContent ?? null,
            points: curve ? curve.data.length : 0,
            card: card?.classList.contains('untrained') ? 'untrained' : card?.querySelector('.digit')?.textContent,
            fresh: card?.classList.contains('fresh') ?? false,
            notReloaded: window.notReloaded === true,
          };
        }""",
        [step, NUMBER],
    )


def wait_until(page, check, what: str, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        state = live_state(page)
        if check(state):
            return state
        assert time.monotonic() < deadline, f"the page never showed {what}: {state}"
        page.wait_for_timeout(100)


def test_progress_files_and_a_publish_seen_live(browser, live_server: LiveServer) -> None:
    context, page, problems = open_page(browser, live_server.url, **DESKTOP)
    try:
        page.evaluate("window.notReloaded = true")
        page.wait_for_function("document.body.dataset.live === 'connected'")
        first = live_state(page)
        assert not first["shown"] and first["card"] == "untrained"

        write_progress(live_server.models_dir, progress(fraction=0.25))
        shown = wait_until(page, lambda s: s["state"] == "training", "the step training")
        assert shown["bar"] == 8 and shown["points"] == 0  # 0.25 of the first of 3 epochs
        assert shown["facts"].startswith("Epoch 1 of 3, 25")
        assert "about 1 min left" in shown["facts"]

        for done, accuracy in ((1, 91.5), (2, 95.25)):
            history = [epoch(n + 1, accuracy - 3 * (done - 1 - n)) for n in range(done)]
            write_progress(live_server.models_dir, progress(epoch=done + 1, history=history))
            grown = wait_until(page, lambda s, d=done: s["points"] == d, f"{done} points")
            assert grown["bar"] == round(100 * done / 3)
            assert f"epoch {done}: test {accuracy:.2f} %" in grown["facts"]

        version = republish(live_server.source, live_server.models_dir, HELD)
        history = [epoch(1, 92.25), epoch(2, 95.25), epoch(3, 97.5)]
        finished = progress(state="published", version=version, epoch=3, fraction=1.0)
        write_progress(live_server.models_dir, finished.model_copy(update={"history": history}))
        card = wait_until(page, lambda s: s["card"] not in (None, "untrained", "–"), "the card")
        assert card["card"] in "0123456789" and card["fresh"] and card["notReloaded"]
        done = wait_until(page, lambda s: s["state"] == "published", "the step published")
        assert done["bar"] == 100 and done["points"] == 3
        page.wait_for_function(UP_TO_DATE)  # the example digit, answered again with the new card
        assert page.evaluate("document.body.dataset.livePublished") == HELD
    finally:
        context.close()
    assert problems.seen == []


def stale(step: str) -> StepProgress:
    """A file its trainer stopped writing 10 heartbeats ago: killed."""
    updated = (datetime.now(UTC) - timedelta(seconds=10 * HEARTBEAT_SECONDS)).isoformat()
    history = [epoch(1, 88.0), epoch(2, 93.0)]
    return progress(step, epoch=3, fraction=0.4, epochs=15, history=history, updated_at=updated)


@pytest.mark.parametrize("screen", ["desktop", "phone"])
def test_screenshots_of_the_live_view(browser, live_server: LiveServer, screen: str) -> None:
    """Three steps training side by side at different points, one whose trainer was killed."""
    root = live_server.models_dir
    write_progress(root, progress("gap", epochs=15, epoch=7, fraction=0.6, eta_seconds=252.0,
        history=[epoch(n, 90 + 8 * (1 - 0.7**n)) for n in range(1, 7)]))  # fmt: skip
    write_progress(root, progress(HELD, epochs=15, epoch=4, fraction=0.3, eta_seconds=331.0,
        history=[epoch(n, 94 + 5 * (1 - 0.6**n)) for n in range(1, 4)]))  # fmt: skip
    write_progress(root, stale("dropout"))
    context, page, problems = open_page(
        browser, live_server.url, **(PHONE if screen == "phone" else DESKTOP)
    )
    try:
        page.wait_for_function("Chart.getChart('live-acc')?.data.datasets.length === 6")
        assert (
            page.locator('.live-step[data-step="dropout"]').get_attribute("data-state") == "stopped"
        )
        assert "killed" in page.locator('.live-step[data-step="dropout"] .live-facts').inner_text()
        assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"lab-live-{screen}.png"
        page.locator("#live").screenshot(path=str(path))
        assert path.stat().st_size > 20_000
    finally:
        context.close()
    assert problems.seen == []


# The trainer's side of the progress contract (volume/progress.py) comes with issue 28.
TRAINER_WRITES_PROGRESS = any(
    "write_progress" in path.read_text() for path in (ROOT / "trainer").glob("*.py")
)


@pytest.mark.skipif(
    not TRAINER_WRITES_PROGRESS,
    reason="the trainer does not write progress/<step>.json yet (volume.progress.write_progress "
    "is called nowhere in trainer/): issue 28's trainer-side progress has not landed",
)
@pytest.mark.timeout(1200)
def test_a_real_trainer_seen_live(browser, live_server: LiveServer, mnist_dir: Path) -> None:
    """`python -m trainer run` trains HELD into the served volume while the page is open: its
    bar moves, its curve gains a point per epoch, and its card appears when it publishes."""
    context, page, problems = open_page(browser, live_server.url, **DESKTOP)
    page.evaluate("window.notReloaded = true")
    command = [
        sys.executable, "-m", "trainer", "run", "--steps", HELD, "--epochs", "2", "--limit",
        "3000", "--quiet", "--out", str(live_server.models_dir), "--data-dir", str(mnist_dir),
    ]  # fmt: skip
    trainer = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[dict] = []
    try:
        deadline = time.monotonic() + 900
        while not (seen and seen[-1]["card"] not in (None, "untrained", "–")):
            assert time.monotonic() < deadline, f"no card after 900 s; the page showed {seen[-1:]}"
            if trainer.poll() not in (None, 0):
                pytest.fail(f"the trainer failed: {trainer.stdout.read().decode()[-3000:]}")
            seen.append(live_state(page))
            page.wait_for_timeout(100)
        page.wait_for_function(UP_TO_DATE)
        assert trainer.wait(timeout=120) == 0
    finally:
        if trainer.poll() is None:
            trainer.kill()
        context.close()
    training = [s for s in seen if s["state"] == "training"]
    assert training, "the page never showed the step training"
    bars = [s["bar"] for s in training]
    assert min(bars) < 50 and max(bars) > min(bars), bars  # the bar moved through the run
    assert {0, 1} <= {s["points"] for s in training}  # the curve gained a point mid-run
    assert seen[-1]["fresh"] and seen[-1]["notReloaded"]
    assert problems.seen == []
