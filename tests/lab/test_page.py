"""The lab page in a real Chromium, against the real service on a volume the real trainer
filled: drawn with real pointer events (mouse, and touch on a phone-sized screen).

Every test also checks (in its page fixture) that the browser saw no console error, no uncaught
exception and no failed request. Screenshots go to build/lab-screenshots/ (LAB_SCREENSHOTS).
"""

from __future__ import annotations

import base64
import itertools
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Response

from service import images
from tests.lab.conftest import FINAL, SCREENSHOTS, UNTRAINED, open_page
from tests.service.photos import load_mnist, render
from volume import STEP_SLUGS

# Training the volume comes first, in the first test's setup: minutes when the machine is busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

UP_TO_DATE = """() => {
  const d = document.body.dataset;
  return (d.reading || '0') === '0' && d.busy === 'false' && d.predicted === d.wanted
    && d.answered === d.wanted;
}"""
EXPLAINED = "() => document.body.dataset.explained === document.body.dataset.wanted"


def steps(url: str) -> list[dict]:
    return httpx.get(f"{url}/steps").json()


Stroke = list[tuple[float, float]]  # points the pen passes, in fractions of the pad's size


def strokes(digit: np.ndarray, threshold: int = 160) -> list[Stroke]:
    """An MNIST digit as pen strokes on the pad: one horizontal stroke along each run of inked
    pixels of each row (a dot for a run of one), the digit fitted into 80 % of the pad."""
    rows, cols = np.nonzero(digit >= threshold)
    top, left = rows.min(), cols.min()
    height, width = rows.max() - top + 1, cols.max() - left + 1
    cell = 0.8 / max(height, width)
    x0, y0 = 0.5 - cell * width / 2, 0.5 - cell * height / 2
    lines = []
    for r in range(top, top + height):
        inked = np.flatnonzero(digit[r] >= threshold)
        for run in np.split(inked, np.flatnonzero(np.diff(inked) > 1) + 1):
            if len(run):
                y = y0 + cell * (r - top + 0.5)
                ends = (run[0], run[-1]) if len(run) > 1 else (run[0],)
                lines.append([(x0 + cell * (c - left + 0.5), y) for c in ends])
    return lines


def pad_box(page) -> dict[str, float]:
    page.locator("#pad").scroll_into_view_if_needed()
    box = page.locator("#pad").bounding_box()
    assert box is not None
    return box


def draw_with_mouse(page, lines: list[Stroke]) -> None:
    box = pad_box(page)
    at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
    for line in lines:
        page.mouse.move(*at(*line[0]))
        page.mouse.down()
        for point in line[1:]:
            page.mouse.move(*at(*point), steps=3)
        page.mouse.up()


def draw_with_touch(page, lines: list[Stroke]) -> None:
    """Real touch events through Chromium's input pipeline (CDP Input.dispatchTouchEvent)."""
    box = pad_box(page)
    cdp = page.context.new_cdp_session(page)
    at = lambda fx, fy: {"x": box["x"] + fx * box["width"], "y": box["y"] + fy * box["height"]}  # noqa: E731
    for line in lines:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [at(*line[0])]})
        for (fx0, fy0), (fx1, fy1) in itertools.pairwise(line):
            for t in (0.25, 0.5, 0.75, 1.0):
                point = at(fx0 + t * (fx1 - fx0), fy0 + t * (fy1 - fy0))
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


SEVEN = [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]]  # a 7: the top bar, then the stem
# A 2 as a hand writes it, in one stroke: the arc over the top, the diagonal, the base.
ARC = [(0.5 + 0.19 * math.cos(a), 0.34 + 0.17 * math.sin(a)) for a in np.linspace(-2.8, 0.5, 12)]
TWO = [[*ARC, (0.42, 0.64), (0.30, 0.80), (0.48, 0.79), (0.72, 0.80)]]


def answered(page, explained: bool = False) -> None:
    page.wait_for_function(UP_TO_DATE, timeout=120_000)
    if explained:
        page.wait_for_function(EXPLAINED, timeout=300_000)


def digit_of(page, slug: str) -> str:
    return page.locator(f'.card[data-step="{slug}"] .digit').inner_text()


def canvas_pixels(page, selector: str) -> np.ndarray:
    data = page.evaluate(
        """s => { const c = document.querySelector(s);
                  return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""",
        selector,
    )
    return np.array(data, np.uint8).reshape(-1, 4)


def exactly_as_tested(digit: dict) -> bool:
    grey = np.frombuffer(base64.b64decode(digit["pixels"]), np.uint8).reshape(28, 28)
    return grey.max() == 255 and images.in_mnist_form(grey.astype(np.float32))


# --- Drawing -----------------------------------------------------------------------------


def test_a_drawn_digit_gets_an_answer_card_per_step(desktop, lab_url: str) -> None:
    listed = steps(lab_url)
    draw_with_mouse(desktop, SEVEN)
    answered(desktop)
    cards = desktop.locator(".card")
    assert cards.count() == len(listed) == len(STEP_SLUGS)
    for step in listed:
        card = desktop.locator(f'.card[data-step="{step["slug"]}"]')
        if step["trained"]:
            assert card.locator(".digit").inner_text() in "0123456789"
            assert "% sure" in card.locator(".conf").inner_text()
            assert card.locator(".bars li").count() == 10
        else:
            assert "Not trained yet" in card.inner_text()
    assert digit_of(desktop, FINAL) == "7"
    status = desktop.locator("#status")
    assert status.get_attribute("aria-live") == "polite"
    assert "say 7" in status.inner_text() or "says 7" in status.inner_text()


def test_nine_of_ten_mnist_digits_drawn_stroke_by_stroke(desktop, mnist_dir: Path) -> None:
    """The first ten MNIST test digits, redrawn on the pad a row of ink at a time."""
    images, labels = load_mnist(mnist_dir)
    desktop.locator("#why").uncheck()  # answers only: the heatmaps have their own test
    said = []
    for image in images[:10]:
        desktop.locator("#clear").click()
        draw_with_mouse(desktop, strokes(image))
        answered(desktop)
        said.append(int(digit_of(desktop, FINAL)))
    right = sum(int(s == label) for s, label in zip(said, labels[:10], strict=True))
    assert right >= 9, f"the final step said {said} for {labels[:10].tolist()}"


def test_live_while_drawing_and_the_last_drawing_answered(desktop, lab_url: str) -> None:
    """Requests go out while the stroke is still being drawn, one at a time, and the answer
    shown is for the final drawing."""
    in_flight, most = [0], [0]

    def sent(request) -> None:
        if request.url.endswith("/predict/all"):
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])

    def done(request) -> None:
        if request.url.endswith("/predict/all"):
            in_flight[0] -= 1

    desktop.on("request", sent)
    desktop.on("requestfinished", done)
    box = pad_box(desktop)
    desktop.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.15 * box["height"])
    desktop.mouse.down()
    posts_while_drawing = []
    for i in range(1, 31):  # a slow vertical stroke: a "1", drawn over about 1.5 s
        desktop.mouse.move(
            box["x"] + 0.3 * box["width"], box["y"] + (0.15 + 0.023 * i) * box["height"]
        )
        desktop.wait_for_timeout(50)
        posts_while_drawing.append(desktop.evaluate("Number(document.body.dataset.answered || 0)"))
    desktop.mouse.up()
    answered(desktop)
    assert max(posts_while_drawing) > 0, "nothing was answered while the stroke went on"
    assert most[0] == 1, f"{most[0]} requests were in flight at once"
    state = desktop.evaluate("({...document.body.dataset})")
    assert state["answered"] == state["wanted"]
    assert digit_of(desktop, FINAL) == "1"


# --- Uploads, samples, mistakes ------------------------------------------------------------


def test_a_photo_upload_is_answered(desktop, mnist_dir: Path, tmp_path: Path) -> None:
    images, labels = load_mnist(mnist_dir)
    data, _ = render(images[0], "jpeg-paper", np.random.default_rng(0))  # a 7 on paper, JPEG
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(data)
    desktop.locator("#upload").set_input_files(photo)
    answered(desktop)
    assert digit_of(desktop, FINAL) == str(labels[0])
    seen = canvas_pixels(desktop, "#seen")
    assert seen[:, 0].max() == 255 and seen[:, 0].mean() < 100  # light ink on black, as MNIST


HEAT_FLOOR = 0.05  # lab.js: a heatmap's full colour is a drop of at least 5 points


def painted_heatmap(answer: dict) -> np.ndarray:
    """The RGBA pixels lab.js's showHeat paints for an /explain answer: the input as paper,
    red where erasing the ink lowers the answer, blue where it raises it."""
    s = np.array(answer["sensitivity"], float).ravel()
    level = np.array(answer["input"], float).ravel()
    alpha = np.minimum(1, np.abs(s) / max(HEAT_FLOOR, np.abs(s).max()) * 1.15)[:, None]
    colour = np.where((s >= 0)[:, None], [214, 40, 40], [37, 99, 235])
    paper = (255 - 0.45 * level)[:, None]
    rgb = np.round(paper * (1 - alpha) + colour * alpha)
    return np.hstack([rgb, np.full((len(s), 1), 255)])


def test_the_preview_and_a_heatmap_per_step_appear(desktop, lab_url: str) -> None:
    explained: dict[str, Response] = {}  # step -> its last /explain response
    desktop.on(
        "response",
        lambda r: "/explain/" in r.url and explained.update({r.url.rsplit("/", 1)[-1]: r}),
    )
    draw_with_mouse(desktop, SEVEN)
    answered(desktop, explained=True)
    seen = canvas_pixels(desktop, "#seen")
    assert (seen[:, 0] > 128).sum() > 20  # the 7, light on black
    for step in steps(lab_url):
        card = f'.card[data-step="{step["slug"]}"]'
        if not step["trained"]:
            assert desktop.locator(f"{card} .heat").count() == 0
            continue
        answer = explained[step["slug"]].json()
        # The drawing's map, not the opening example's: its input is what the models saw.
        assert np.array_equal(np.ravel(answer["input"]), seen[:, 0]), step["slug"]
        heat = canvas_pixels(desktop, f"{card} .heat canvas").astype(int)
        assert np.abs(heat - painted_heatmap(answer)).max() <= 1, f"{step['slug']}'s heatmap"
        largest = np.abs(np.array(answer["sensitivity"])).max()
        note = desktop.locator(f"{card} .heat .fine").inner_text()
        assert note == f"largest drop {100 * largest:.0f}\u00a0%", note  # percent(largest, 0)


def test_a_sample_digit_by_keyboard(desktop) -> None:
    """Every control is reachable by keyboard and named; a sample is chosen with Enter."""
    unnamed = desktop.evaluate(
        """() => [...document.querySelectorAll('button, input, select, a[href]')].filter(e => {
             const label = e.labels && e.labels.length ? e.labels[0].textContent : '';
             return !(e.getAttribute('aria-label') || e.textContent.trim() || label.trim());
           }).map(e => e.outerHTML)"""
    )
    assert unnamed == []
    first = desktop.locator(".sample-row button").first
    assert "MNIST test digit" in first.get_attribute("aria-label")
    for _ in range(60):  # Tab from the top of the page until the first sample has the focus
        desktop.keyboard.press("Tab")
        if desktop.evaluate(
            "document.activeElement === document.querySelector('.sample-row button')"
        ):
            break
    else:
        pytest.fail("the sample digits cannot be reached with Tab")
    desktop.keyboard.press("Enter")
    answered(desktop)
    label = first.get_attribute("aria-label").rsplit(" ", 1)[-1]
    assert desktop.locator("#status").inner_text().startswith(f"True digit {label}.")
    final = desktop.locator(f'.card[data-step="{FINAL}"]')
    assert "agree" in final.get_attribute("class")  # the first sample: a clear 0


# --- The journey ---------------------------------------------------------------------------


def test_the_journey_charts_and_mistakes_render(desktop, lab_url: str) -> None:
    listed = steps(lab_url)
    trained = [s for s in listed if s["trained"]]
    assert desktop.locator("#steps-table tbody tr").count() == len(listed)
    points = desktop.evaluate("Chart.getChart('acc-params').data.datasets[0].data.length")
    assert points == len(trained)
    # The detail opens on the best step; choose the final one.
    desktop.locator(f'#step-picker button[data-step="{FINAL}"]').click()
    assert (
        desktop.locator(f'#step-picker button[data-step="{FINAL}"]').get_attribute("aria-pressed")
        == "true"
    )
    metrics = httpx.get(f"{lab_url}/steps/{FINAL}/metrics").json()
    summary = httpx.get(f"{lab_url}/steps/{FINAL}/summary").json()
    mistakes = httpx.get(f"{lab_url}/steps/{FINAL}/mistakes").json()
    assert desktop.locator("#detail-objective").inner_text() == metrics["objective"]
    for chart in ("acc-curve", "loss-curve"):
        labels = desktop.evaluate(f"Chart.getChart('{chart}').data.labels.length")
        assert labels == len(metrics["epochs"])
    assert desktop.locator("#layers tbody tr").count() == len(summary["layers"])
    desktop.locator("#mistakes-box").wait_for(state="visible")
    assert desktop.locator("#confusion tbody tr").count() == 10
    assert desktop.locator("#confusion tbody tr").first.locator("td").count() == 10
    gallery = desktop.locator("#gallery button:not(.more)")
    assert gallery.count() == min(30, len(mistakes["mistakes"])) > 0
    if len(mistakes["mistakes"]) > 30:
        desktop.locator("#gallery button.more").click()
        assert gallery.count() == len(mistakes["mistakes"])
    # A mistake goes to the pad, and every step answers it, its true label known. One that the
    # service's preprocessing leaves as it is, so that the final step sees what the test saw.
    shown = mistakes["mistakes"][: gallery.count()]
    at, wrong = next((i, m) for i, m in enumerate(shown) if exactly_as_tested(m))
    gallery.nth(at).click()
    answered(desktop)
    assert desktop.locator("#status").inner_text().startswith(f"True digit {wrong['label']}.")
    assert digit_of(desktop, FINAL) == str(wrong["predicted"])
    assert "disagree" in desktop.locator(f'.card[data-step="{FINAL}"]').get_attribute("class")


def test_untrained_steps_show_the_command(desktop, lab_url: str) -> None:
    if any(s["trained"] for s in steps(lab_url) if s["slug"] == UNTRAINED):
        pytest.skip(f"the volume given (LAB_MODELS_DIR) has {UNTRAINED} trained")
    card = desktop.locator(f'.card[data-step="{UNTRAINED}"]')
    command = f"python -m trainer run --steps {UNTRAINED}"
    assert card.locator(".train-command").inner_text() == command
    assert command in desktop.locator(f'#steps-table tr[data-step="{UNTRAINED}"]').inner_text()
    desktop.locator(f'#step-picker button[data-step="{UNTRAINED}"]').click()
    assert command in desktop.locator("#detail-objective").inner_text()


def test_a_volume_from_before_the_lab_hides_what_it_lacks(browser, old_url: str) -> None:
    context, page, problems = open_page(browser, old_url, viewport={"width": 1280, "height": 900})
    try:
        assert page.locator("#samples").is_hidden()
        page.locator(f'#step-picker button[data-step="{FINAL}"]').click()
        assert page.locator("#mistakes-box").is_hidden()
        assert (
            "published before mistakes were recorded" in page.locator("#no-mistakes").inner_text()
        )
        draw_with_mouse(page, SEVEN)
        answered(page)
        assert digit_of(page, FINAL) == "7"
    finally:
        context.close()
    assert problems.seen == []


# --- A phone ---------------------------------------------------------------------------------


def test_a_phone_with_touch(phone) -> None:
    """360 px wide: nothing overflows sideways, a finger draws, and drawing never scrolls."""
    assert phone.evaluate("document.documentElement.scrollWidth") <= 360
    pad_box(phone)
    scrolled = phone.evaluate("window.scrollY")
    # Strokes that drag downwards: without `touch-action: none` they would scroll the page.
    draw_with_touch(phone, SEVEN)
    answered(phone)
    assert phone.evaluate("window.scrollY") == scrolled
    assert digit_of(phone, FINAL) == "7"
    assert phone.evaluate("document.body.dataset.pointer") == "touch"


# --- Screenshots -----------------------------------------------------------------------------


@pytest.mark.parametrize("screen", ["desktop", "phone"])
def test_screenshots(request: pytest.FixtureRequest, screen: str) -> None:
    """The page with a hand-drawn 2 answered and explained, the final step's mistakes below."""
    page = request.getfixturevalue(screen)
    draw = draw_with_touch if screen == "phone" else draw_with_mouse
    page.locator(f'#step-picker button[data-step="{FINAL}"]').click()
    page.locator("#mistakes-box").wait_for(state="visible")
    draw(page, TWO)
    answered(page, explained=True)
    page.evaluate("window.scrollTo(0, 0)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"lab-{screen}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 50_000
    if screen == "phone":  # what a phone shows below the pad: the answers, with heatmaps
        page.locator(".results").evaluate("e => e.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(SCREENSHOTS / "lab-phone-screen.png"))
