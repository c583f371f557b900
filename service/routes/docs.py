"""The API's interactive docs, `GET /docs`, served whole by the service: it works offline.

FastAPI's own `/docs` page loads Swagger UI's script and CSS from a CDN, so behind a firewall
it stays blank. This one is the same page (FastAPI's `get_swagger_ui_html`) pointed at a copy
of Swagger UI under `/static/swagger-ui/`: the npm package `swagger-ui-dist` 5.35.0, its
`swagger-ui-bundle.js`, `swagger-ui.css` and `favicon-32x32.png` byte for byte, with its
LICENSE (Apache-2.0) and NOTICE beside them. To update it, replace those files from a newer
`npm pack swagger-ui-dist` and their hashes in tests/service/test_docs_page.py.

ReDoc (`/redoc`) is off rather than vendored too: Swagger UI shows the same document.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter()

SWAGGER_UI = "/static/swagger-ui"
SWAGGER_UI_VERSION = "5.35.0"


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - docs",
        swagger_js_url=f"{root}{SWAGGER_UI}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{SWAGGER_UI}/swagger-ui.css",
        swagger_favicon_url=f"{root}{SWAGGER_UI}/favicon-32x32.png",
        # No validator badge: Swagger UI would fetch it from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
