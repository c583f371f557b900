"""The page on a service with API keys on, in a real Chromium: it asks for the key once, at the
first 401 (again if the key is wrong), keeps it for the tab, and every request then carries it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.servers import serve
from tests.service.conftest import KEYS, publish, random_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn with API_KEYS on a volume of two fixture steps (no training needed here)."""
    root = tmp_path_factory.mktemp("keyed")
    for number, step in enumerate(("gap", "scheduler")):
        publish(root / "models", step, random_model(number), lab=True)
    env = os.environ | {
        "MODELS_DIR": str(root / "models"), "PYTHONPATH": str(ROOT), "API_KEYS": ",".join(KEYS),
    }  # fmt: skip
    command = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1"]
    log = root / "uvicorn.log"
    with serve(lambda port: [*command, "--port", str(port)], env, ROOT, log) as (client, _):
        yield str(client.base_url)
    assert not any(key in log.read_text() for key in KEYS)


def test_the_page_asks_once_keeps_the_key_for_the_tab_and_sends_it(browser, keyed_url: str) -> None:
    questions: list[str] = []
    answers = iter(["not-a-key-0000000000", KEYS[1]])  # a wrong key first: asked again

    def answer(dialog) -> None:
        questions.append(dialog.message)
        dialog.accept(next(answers, ""))

    context = browser.new_context()
    context.on("page", lambda page: page.on("dialog", answer))
    keys_sent: list[str | None] = []
    context.on("request", lambda r: "/static/" not in r.url and keys_sent.append(
        r.headers.get("authorization")))  # fmt: skip
    page = ready_page(context, keyed_url)
    assert len(questions) == 2, questions
    assert "needs an API key" in questions[0] and "not one of this service's keys" in questions[1]
    assert page.evaluate("sessionStorage.getItem('mnist-steps-api-key')") == KEYS[1]
    assert page.locator('.card[data-step="gap"]').count() == 1

    keys_sent.clear()
    page.reload()
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=60_000)
    assert len(questions) == 2  # kept for the tab: not asked again
    api = [k for k in keys_sent if k is not None]
    assert api and set(api) == {f"Bearer {KEYS[1]}"}
    context.close()

    fresh = browser.new_context()  # another tab's storage: asked again, cancelled
    fresh.on("page", lambda page: page.on("dialog", lambda d: d.dismiss()))
    page = fresh.new_page()
    page.goto(keyed_url)
    page.wait_for_timeout(1500)
    assert page.evaluate("sessionStorage.getItem('mnist-steps-api-key')") is None
    fresh.close()


def ready_page(context, url: str):
    """A page of `context` at `url`, once its steps, journey and samples are loaded."""
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=60_000)
    return page
