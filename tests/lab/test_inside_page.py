"""The inside view in a real Chromium, against the real service on the trainer-filled volume:
tiles for every layer of two steps, a tapped unit's receptive field as the layer table gives
it, the diff naming the changed layers; at desktop and phone size (no console error, no failed
request: the page fixtures check). Screenshots go to build/lab-screenshots/inside-*.png."""

from __future__ import annotations

import itertools
import math

import httpx
import pytest

from tests.lab.conftest import SCREENSHOTS
from tests.lab.test_page import SEVEN, TWO, answered, draw_with_mouse, draw_with_touch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SIZE = 28
PAIR = ("batchnorm", "lighter")  # the step BatchNorm is added in, beside the step before it
FIELD_COLOUR = (255, 176, 32)  # the frame inside.js draws around a field (#ffb020)


def summary(url: str, slug: str) -> list[dict]:
    return httpx.get(f"{url}/steps/{slug}/summary").json()["layers"]


def expected_field(row: dict, unit_row: int, unit_col: int) -> tuple[int, int, int, int]:
    """The field's box on the input, clipped: the table's receptive field and jump, its first
    unit's field placed so that a row of units spans the image symmetrically."""
    size, jump = row["receptive_field"], row["jump"]
    height, width = row["output_shape"][2:] if len(row["output_shape"]) == 4 else (1, 1)

    def start(n: int) -> int:
        return math.floor((SIZE - 1 - (n - 1) * jump - (size - 1)) / 2)

    top, left = start(height) + unit_row * jump, start(width) + unit_col * jump

    def clip(v: int) -> int:
        return min(SIZE - 1, max(0, v))

    return clip(top), clip(left), clip(top + size - 1), clip(left + size - 1)


def look_inside(page, chosen: str, beside: str) -> None:
    """Scroll to the view, choose the step and the one beside it, wait until both are drawn
    for the current input."""
    page.locator("#inside").scroll_into_view_if_needed()
    page.locator("#inside-picker button", has_text=chosen).click()
    if page.locator("#inside-other").input_value() != beside:
        page.locator("#inside-other").select_option(beside)
    page.wait_for_function(
        """want => document.body.dataset.insideSteps === want
             && document.body.dataset.inside === document.body.dataset.wanted""",
        arg=f"{chosen} {beside}",
        timeout=120_000,
    )


def test_tiles_for_every_layer_of_two_steps_and_their_diff(desktop, lab_url: str) -> None:
    draw_with_mouse(desktop, SEVEN)
    answered(desktop)
    look_inside(desktop, *PAIR)
    for slug in PAIR:
        column = desktop.locator(f'.inside-col[data-step="{slug}"]')
        rows = summary(lab_url, slug)
        items = column.locator(".layer")
        assert items.evaluate_all("l => l.map(e => e.dataset.layer)") == [r["name"] for r in rows]
        for i, row in enumerate(rows):
            shape = row["output_shape"][1:]
            maps = len(shape) == 3 and shape[1] * shape[2] > 1
            tiles = items.nth(i).locator(".tile" if maps else ".strip")
            assert tiles.count() == (min(8, shape[0]) if maps else 1), row["name"]
        # The tiles are painted: a layer's canvases are not all one grey.
        spread = column.locator(".layer").first.evaluate(
            """l => { const c = l.querySelector('canvas'), x = c.getContext('2d');
                      const d = x.getImageData(0, 0, c.width, c.height).data;
                      let lo = 255, hi = 0;
                      for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
                      return hi - lo; }"""
        )
        assert spread > 30
        assert column.locator(".kernel-row canvas").count() == rows[0]["output_shape"][1]
    # The rest on demand: every channel of the widest layer of the first step.
    widest = max(summary(lab_url, PAIR[0]), key=lambda r: r["output_shape"][1])
    item = desktop.locator(
        f'.inside-col[data-step="{PAIR[0]}"] .layer[data-layer="{widest["name"]}"]'
    )
    item.locator("button.more").click()
    item.locator(".tile").nth(widest["output_shape"][1] - 1).wait_for()
    assert item.locator(".tile").count() == widest["output_shape"][1]
    # What changed: BatchNorm after each convolution but the last, nothing else.
    later, earlier = PAIR
    rows = desktop.locator("#inside-diff tbody tr")
    added = rows.filter(has=desktop.locator("td.change", has_text="added"))
    names = added.evaluate_all("rs => rs.map(r => r.children[4].textContent)")
    norms = [r for r in summary(lab_url, later) if r["type"] == "BatchNorm2d"]
    assert names == [r["name"] for r in norms]
    deltas = added.evaluate_all("rs => rs.map(r => r.children[7].textContent)")
    assert deltas == [f"+{r['params']:,}" for r in norms]  # gamma and beta per channel
    assert rows.count() == len(summary(lab_url, later))  # every earlier row pairs with one
    heading = desktop.locator("#inside-diff h3").inner_text()
    assert heading == f"What changed from {earlier} to {later}"
    assert "Training recipe: the same." in desktop.locator("#inside-diff").inner_text()


def test_tapping_a_unit_draws_its_receptive_field(desktop, lab_url: str) -> None:
    """One layer of each receptive-field size, as the field grows through the step."""
    draw_with_mouse(desktop, TWO)
    answered(desktop)
    look_inside(desktop, *PAIR)
    rows = summary(lab_url, PAIR[0])
    maps = [r for r in rows if len(r["output_shape"]) == 4 and r["output_shape"][2] > 1]
    first_of_each = {r["receptive_field"]: r for r in reversed(maps)}
    assert len(first_of_each) >= 4  # 3, 5, 7, 8, ...: it grows
    column = desktop.locator(f'.inside-col[data-step="{PAIR[0]}"]')
    for row in sorted(first_of_each.values(), key=lambda r: r["receptive_field"]):
        height, width = row["output_shape"][2:]
        tile = column.locator(f'.layer[data-layer="{row["name"]}"] .tile').first
        tile.scroll_into_view_if_needed()
        box = tile.bounding_box()
        unit_row, unit_col = height // 2, width // 3  # off-centre: the column must count
        tile.click(
            position={
                "x": (unit_col + 0.5) * box["width"] / width,
                "y": (unit_row + 0.5) * box["height"] / height,
            }
        )
        figure = column.locator("figure.field")
        assert figure.get_attribute("data-layer") == row["name"]
        assert int(figure.get_attribute("data-rf")) == row["receptive_field"]
        top, left, bottom, right = (int(v) for v in figure.get_attribute("data-box").split(","))
        assert (top, left, bottom, right) == expected_field(row, unit_row, unit_col), row["name"]
        if row["receptive_field"] <= SIZE:
            assert bottom - top + 1 == right - left + 1 == row["receptive_field"]
        # The frame is on the canvas, on the field's left edge, halfway down.
        pixel = column.locator("figure.field canvas").evaluate(
            "(c, at) => [...c.getContext('2d').getImageData(at[0], at[1], 1, 1).data].slice(0, 3)",
            [left * 10 + 3, (top + bottom + 1) * 5],
        )
        assert pixel == list(FIELD_COLOUR), row["name"]
        assert f"{row['receptive_field']}\u00d7{row['receptive_field']}" in figure.inner_text()


def test_a_step_that_folds_batchnorm_says_so(desktop, lab_url: str) -> None:
    """The final step's convolutions before BatchNorm are folded by the export: said, no tiles."""
    draw_with_mouse(desktop, SEVEN)
    answered(desktop)
    look_inside(desktop, "scheduler", "gap")
    rows = summary(lab_url, "scheduler")
    folded = [a["name"] for a, b in itertools.pairwise(rows) if b["type"] == "BatchNorm2d"]
    column = desktop.locator('.inside-col[data-step="scheduler"]')
    assert (
        column.locator(".layer.folded").evaluate_all("l => l.map(e => e.dataset.layer)") == folded
    )
    assert column.locator(".layer.folded .tile").count() == 0
    assert "Folded into" in column.locator(".layer.folded").first.inner_text()
    gap = desktop.locator('.inside-col[data-step="gap"]')
    dropout = gap.locator('.layer[data-layer^="Dropout"]').first
    assert "its output is BatchNorm2d" in dropout.inner_text() and dropout.locator(".tile").count()


@pytest.mark.parametrize("screen", ["desktop", "phone"])
def test_inside_screenshots(request: pytest.FixtureRequest, screen: str) -> None:
    """No wider than the screen at 360 px; the view with a field drawn, for the docs."""
    page = request.getfixturevalue(screen)
    draw = draw_with_touch if screen == "phone" else draw_with_mouse
    draw(page, TWO)
    answered(page)
    look_inside(page, *PAIR)
    tile = (
        page.locator(f'.inside-col[data-step="{PAIR[0]}"] .layer').nth(12).locator(".tile").nth(1)
    )
    tile.scroll_into_view_if_needed()
    tile.click()
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
    # The diff's table fits too (its box would scroll it sideways otherwise).
    table = page.locator("#inside-diff .table-scroll")
    assert table.evaluate("e => e.scrollWidth <= e.clientWidth")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#inside-title").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(SCREENSHOTS / f"inside-{screen}.png"))
    tile.evaluate("e => e.scrollIntoView({block: 'center'})")
    path = SCREENSHOTS / f"inside-{screen}-field.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 30_000
