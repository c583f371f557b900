"""`/docs` in a real Chromium with the network cut off: every request to anything but the
service is refused, and Swagger UI still lists every operation of the OpenAPI document."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.lab.conftest import Problems


@pytest.mark.slow  # drives a browser
def test_the_api_docs_work_offline(browser, empty_url: str) -> None:
    service = urlsplit(empty_url).netloc
    refused: list[str] = []

    def only_the_service(route) -> None:
        if urlsplit(route.request.url).netloc == service:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    context = browser.new_context()
    context.route("**/*", only_the_service)
    page = context.new_page()
    problems = Problems()
    problems.watch(page)
    page.goto(f"{empty_url}/docs")
    page.wait_for_selector(".opblock", timeout=30_000)

    document = httpx.get(f"{empty_url}/openapi.json").json()
    operations = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    shown = {
        (
            block.locator(".opblock-summary-method").inner_text(),
            block.locator(".opblock-summary-path").get_attribute("data-path"),
        )
        for block in page.locator(".opblock-summary").all()
    }
    assert ("POST", "/predict/{step}") in shown
    assert shown == operations
    assert refused == [] and problems.seen == []

    # The block is real: a request the page makes to another host is refused.
    outcome = page.evaluate(
        "fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css')"
        ".then(() => 'loaded', () => 'refused')"
    )
    assert outcome == "refused" and len(refused) == 1
    context.close()
