"""Response bodies checked against the served OpenAPI document, with jsonschema.

OpenAPI 3.0 schemas are JSON Schema draft 4 plus `nullable` and local `$ref`s; `json_schema` turns one
into plain draft 4, and by default closes every object that lists its properties, so a body with an
undocumented key fails as surely as one missing a required key.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from tests.support.json_client import Client

OPENAPI_PATH = "/api/openapi.json"


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def json_schema(document: dict[str, Any], schema: Any, closed: bool = True) -> Any:
    """`schema` (part of `document`) as plain JSON Schema draft 4: references inlined, `nullable` as a null branch."""
    if isinstance(schema, list):
        return [json_schema(document, item, closed) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return json_schema(document, _resolve(document, schema["$ref"]), closed)
    converted = {key: json_schema(document, value, closed) for key, value in schema.items() if key != "nullable"}
    if "properties" in schema:
        # Property names are not schemas: keep them, convert what each one maps to.
        converted["properties"] = {k: json_schema(document, v, closed) for k, v in schema["properties"].items()}
        if closed and "additionalProperties" not in schema:
            converted["additionalProperties"] = False
    if schema.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


class ResponseShapes:
    """Checks response bodies against one OpenAPI document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    @classmethod
    async def served(cls, client: Client) -> ResponseShapes:
        """The checker for the document the app under test serves."""
        response = await client.get(OPENAPI_PATH)
        assert response.status == 200, await response.text()
        return cls(await response.json())

    def schema(self, path: str, method: str, status: int | str = 200) -> dict[str, Any]:
        """The documented JSON body schema of one response, as OpenAPI writes it."""
        operation = self.document["paths"][path][method.lower()]
        responses = operation["responses"]
        assert str(status) in responses, f"{status} is not documented for {method.upper()} {path}"
        media = responses[str(status)].get("content", {}).get("application/json")
        assert media is not None, f"{method.upper()} {path} {status}: every documented response is JSON"
        schema: dict[str, Any] = media.get("schema", {})
        return schema

    def check(self, body: Any, path: str, method: str, status: int | str = 200, closed: bool = True) -> None:
        """Fail with jsonschema's message unless `body` is what the document promises for this response."""
        schema = json_schema(self.document, self.schema(path, method, status), closed)
        validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{method.upper()} {path} {status}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}" for e in errors
        )
