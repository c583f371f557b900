"""The OpenAPI document (`/openapi.json`, `/docs`): FastAPI's, completed where it cannot know.

- A request body written by hand (the /v2 infer body, which its route parses itself for
  Triton's binary extension) refers to its models by `#/components/schemas/...`: they are put
  there, with the models they use, so that no reference dangles (tests/service/test_openapi.py
  validates the whole document).
- With API keys on (service/auth.py), the two ways to send one as security schemes, and on
  every guarded operation its requirement and its 401: /docs then offers "Authorize", and a
  client generator sends the header. With keys off, the document says nothing of keys.

Built once, at the first request for it after start-up (the settings are known by then).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from service import auth
from service.routes import v2

BODY_MODELS: tuple[type[BaseModel], ...] = v2.BODY_MODELS
COMPONENTS = "#/components/schemas/{model}"
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer KEY`: one of API_KEYS or API_KEYS_FILE",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": auth.HEADER,
        "description": f"`{auth.HEADER}: KEY`: the same keys",
    },
}


def add_models(schema: dict[str, Any], models: tuple[type[BaseModel], ...]) -> None:
    """Each model's JSON schema, and those of the models it uses, as components."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        body = model.model_json_schema(ref_template=COMPONENTS)
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body


def require_keys(schema: dict[str, Any]) -> None:
    """The key requirement and its 401 on every operation that `auth` guards."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema["paths"].items():
        if auth.is_open(path):
            continue
        error = "ErrorResponse" if path.startswith("/v2") else "ErrorDetail"
        for operation in operations.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation["responses"]["401"] = {
                "description": f"no API key, or not one of the service's; {auth.HOW_TO_SEND}",
                "content": {
                    "application/json": {"schema": {"$ref": COMPONENTS.format(model=error)}}
                },
            }


def complete(app: FastAPI) -> None:
    """Have `app` serve FastAPI's document completed as above."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI's, cached in app.openapi_schema: completed in place
            add_models(schema, BODY_MODELS)
            if getattr(app.state, "api_keys", ()):
                require_keys(schema)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
