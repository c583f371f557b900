"""`GET /docs` is served whole by the service: Swagger UI's files are ours, ReDoc is off."""

from __future__ import annotations

import hashlib
import re

import pytest
from fastapi.testclient import TestClient

from service.routes.lab import STATIC_DIR

# swagger-ui-dist 5.35.0 from the npm registry (`npm pack swagger-ui-dist@5.35.0`), byte for byte.
VENDORED = [
    ("swagger-ui-bundle.js", "e6a898692f2d768e807c3ba4626068a69a2c5dd960dd6c76f3e4d3a3de180af2"),
    ("swagger-ui.css", "5ed08757e53da3e026d6cbecc61fe5d43585c9560b302d534ad56692519a273d"),
    ("favicon-32x32.png", "3ed612f41e050ca5e7000cad6f1cbe7e7da39f65fca99c02e99e6591056e5837"),
    ("LICENSE", "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"),
    ("NOTICE", "0d20d1adef18aee3f40dd258172155521ce702ac445cb5f7b7d60ed32dad2fb2"),
]


@pytest.mark.parametrize(("name", "sha256"), VENDORED)
def test_the_vendored_swagger_ui_is_the_released_package(name: str, sha256: str) -> None:
    data = (STATIC_DIR / "swagger-ui" / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256


def test_the_docs_page_loads_only_the_services_files(empty_client: TestClient) -> None:
    answer = empty_client.get("/docs")
    assert answer.status_code == 200
    links = re.findall(r"""(?:src|href)=["']([^"']+)["']""", answer.text)
    links += re.findall(r"url: '([^']+)'", answer.text)  # the OpenAPI document Swagger UI reads
    assert "/static/swagger-ui/swagger-ui-bundle.js" in links and "/openapi.json" in links
    for link in links:
        assert link.startswith("/"), link
        assert empty_client.get(link).status_code == 200, link
    # Swagger UI would fetch its validator badge from validator.swagger.io.
    assert '"validatorUrl": null' in answer.text


@pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect"])
def test_the_pages_that_need_a_cdn_are_off(empty_client: TestClient, path: str) -> None:
    assert empty_client.get(path).status_code == 404
