"""What a new user sees first, in a real Chromium: an example digit already answered (not a
row of dashes), a page no wider than a phone on every view, the step facts' gap between train
and test read without a double sign, and the accuracy-against-parameters chart's labels apart.
"""

from __future__ import annotations

import itertools
import re

import httpx
import pytest

from tests.lab.conftest import FINAL, LiveServer, open_page
from tests.lab.test_live import progress, stale
from tests.lab.test_page import SEVEN, answered, canvas_pixels, digit_of, draw_with_mouse, steps
from volume.progress import write_progress

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_the_page_opens_with_an_example_answered(desktop, lab_url: str) -> None:
    samples = httpx.get(f"{lab_url}/samples").json()["digits"]
    first = min(samples, key=lambda d: d["index"])
    answered(desktop)  # nothing done yet: the page's own example
    status = desktop.locator("#status").inner_text()
    assert status.startswith(f"An example: MNIST test digit #{first['index']}, a {first['label']}.")
    assert "draw your own digit" in status
    for step in steps(lab_url):
        if step["trained"]:
            card = desktop.locator(f'.card[data-step="{step["slug"]}"]')
            assert card.locator(".digit").inner_text() in "0123456789"
            assert "% sure" in card.locator(".conf").inner_text()
    seen = canvas_pixels(desktop, "#seen")
    assert (seen[:, 0] > 128).sum() > 20  # the digit, light on black
    pad = canvas_pixels(desktop, "#pad")
    assert (pad[:, 0] < 128).sum() > 500  # and on the pad, dark on white
    # Drawing starts on a clean pad: the models answer the drawing alone.
    draw_with_mouse(desktop, SEVEN)
    answered(desktop)
    assert not desktop.locator("#status").inner_text().startswith("An example")
    assert digit_of(desktop, FINAL) == "7"


def test_a_volume_without_samples_opens_saying_what_to_do(browser, old_url: str) -> None:
    context, page, problems = open_page(browser, old_url, viewport={"width": 1280, "height": 900})
    try:
        assert page.locator("#status").inner_text().startswith("Draw a digit:")
        conf = page.locator(f'.card[data-step="{FINAL}"] .conf').inner_text()
        assert conf == "waiting for a digit"
        assert "empty" in page.locator("#seen").get_attribute("class")
    finally:
        context.close()
    assert problems.seen == []


GAP = re.compile(r"train \d+\.\d\d %, (\d+\.\d\d points (above|below) test|the same as test)\)")


@pytest.mark.parametrize("width", [360, 390])
def test_every_view_fits_a_phone(browser, live_server: LiveServer, width: int) -> None:
    """The document is never wider than the screen: the first view, every step's detail (their
    training commands are long), and the live view with a step training and one stopped."""
    write_progress(live_server.models_dir, progress("gap", epochs=15, epoch=4, fraction=0.5))
    write_progress(live_server.models_dir, stale("dropout"))
    context, page, problems = open_page(
        browser,
        live_server.url,
        viewport={"width": width, "height": 800},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    wide = "document.documentElement.scrollWidth"
    try:
        page.locator("#live .live-step").first.wait_for()
        assert page.evaluate(wide) <= width, "the first view"
        listed = steps(live_server.url)
        for step in listed:
            page.locator(f'#step-picker button[data-step="{step["slug"]}"]').click()
            title = page.locator("#detail-title").inner_text()
            assert f"({step['slug']})" in title
            assert page.evaluate(wide) <= width, f"the detail of {step['slug']}"
            if step["trained"]:
                facts = page.locator("#detail-facts").inner_text()
                assert GAP.search(facts), facts
        assert any(not s["trained"] for s in listed)  # an untrained step's view was among them
    finally:
        context.close()
    assert problems.seen == []


def overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


@pytest.mark.parametrize("screen", ["desktop", "phone"])
def test_the_chart_labels_stand_apart(request: pytest.FixtureRequest, screen: str) -> None:
    """Each point's label overlaps no other label and no point, and stays inside the chart."""
    page = request.getfixturevalue(screen)
    chart = page.evaluate(
        """(() => { const c = Chart.getChart('acc-params');
             return { boxes: c.labelBoxes, area: c.chartArea, width: c.width,
                      points: c.getDatasetMeta(0).data.map((p) => [p.x, p.y]) }; })()"""
    )
    boxes, area = chart["boxes"], chart["area"]
    assert len(boxes) == len(chart["points"]) > 1
    for a, b in itertools.combinations(boxes, 2):
        assert not overlap(a, b), (a, b)
    for box in boxes:
        assert area["left"] <= box["x"] and box["x"] + box["w"] <= area["right"], box
        assert box["y"] >= 0 and box["y"] + box["h"] <= area["bottom"], box
        for x, y in chart["points"]:
            assert not overlap(box, {"x": x - 3, "y": y - 3, "w": 6, "h": 6}), (box, x, y)
