"""The OpenAPI schema says what the service does: the names `step` takes, the upload's form."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

import volume


@given(st.text(max_size=12) | st.sampled_from([*volume.STEP_SLUGS, "best", "BeSt", " 06 "]))
def test_the_step_pattern_matches_exactly_the_names_the_service_accepts(name: str) -> None:
    try:
        volume.resolve_step(name, {"gap": 99.0})
        accepted = True
    except volume.UnknownStepError:
        accepted = False
    # JSON Schema's pattern (ECMA 262): `$` is the end of the string, as `\Z` is in Python.
    assert bool(re.search(volume.STEP_NAME_PATTERN.replace("$", r"\Z"), name)) == accepted


@pytest.mark.parametrize("name", ["²", "١", "\u2003gap", "\x1cgap", "gap\n", "0", "-1"])
def test_names_beyond_ascii_digits_and_spaces_are_unknown(name: str) -> None:
    """str.isdigit() is true for "²", which int() refuses: /predict/² was a 500."""
    with pytest.raises(volume.UnknownStepError):
        volume.resolve_step(name)


def test_the_schema_describes_steps_and_a_non_empty_file_list(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/predict/{step}", "/steps/{step}/summary", "/steps/{step}/metrics"):
        (operation,) = paths[path].values()
        (step,) = [p for p in operation["parameters"] if p["name"] == "step"]
        assert step["schema"]["pattern"] == volume.STEP_NAME_PATTERN
        assert "best" in step["description"]
    body = paths["/predict/{step}"]["post"]["requestBody"]["content"]["multipart/form-data"]
    files = body["schema"]["properties"]["file"]
    assert files["minItems"] == 1 and files["maxItems"] == client.app.state.settings.max_batch
    assert {"408", "503"} <= set(paths["/predict/{step}"]["post"]["responses"])


def references(node: object) -> list[str]:
    """Every `$ref` in a JSON document."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in references(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in references(v)]
    return []


def resolves(document: dict, reference: str) -> bool:
    """Whether a local reference (`#/a/b`, JSON Pointer) names something in the document."""
    node: object = document
    for part in reference.removeprefix("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("keys", ["off", "on"])
def test_the_whole_document_is_valid_and_no_reference_dangles(
    request: pytest.FixtureRequest, keys: str
) -> None:
    """openapi-spec-validator (written by others) on all of it; it does not follow a schema's
    `$ref`s, so each one is resolved here too (the /v2 bodies' once pointed at `#/$defs`)."""
    from openapi_spec_validator import validate

    client = request.getfixturevalue("keyed_client" if keys == "on" else "client")
    document = client.get("/openapi.json").json()
    validate(document)
    found = references(document)
    assert "#/components/schemas/InferenceRequest" in found
    assert all(r.startswith("#/") for r in found)  # nothing outside the document
    assert [r for r in found if not resolves(document, r)] == []
