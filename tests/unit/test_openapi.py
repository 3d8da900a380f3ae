"""Keeps /api/openapi.json true: routes and operations match, and real responses fit the documented ones."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import OpenAPIV30SpecValidator

from memharbor import agora
from memharbor.errors import Unavailable
from tests.support.api_worlds import TokenWorld, beat, make_settings
from tests.support.openapi_shapes import ResponseShapes
from token_http import openapi
from token_http.app import create_app

Client = TestClient[web.Request, web.Application]
World = TokenWorld
CHANNEL = TokenWorld.CHANNEL
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route registered in the app's router.

    aiohttp registers a HEAD route next to every GET; HEAD is implied by GET in the document.
    """
    operations = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"route without a path: {route!r}"
        if (route.method, path) == ("*", "/{path}"):
            continue  # the catch-all answering 404 and 405 (token_http.access_log), not an operation
        operations.add((route.method.upper(), path))
    gets = {path for method, path in operations if method == "GET"}
    return {(m, p) for m, p in operations if not (m == "HEAD" and p in gets)}


def document_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    return {
        (method.upper(), path) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS
    }


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a local $ref (one level is all the document uses, but loop anyway)."""
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def all_refs(node: Any) -> list[str]:
    """Every $ref value anywhere in a JSON tree."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in all_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in all_refs(value)]
    return []


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(make_settings(), world.deps()))) as test_client:
        yield test_client


class TestDocumentShape:
    """The document is a well-formed OpenAPI 3 description served at /api/openapi.json."""

    def test_is_openapi_3_with_resolvable_refs(self) -> None:
        """openapi is 3.x, info is present, every operation has responses and every $ref resolves."""
        document = openapi.document()
        assert document["openapi"].startswith("3.")
        assert document["info"]["title"] and document["info"]["version"]
        for path, item in document["paths"].items():
            assert path.startswith("/")
            for method, operation in item.items():
                assert method in HTTP_METHODS
                assert operation["responses"], f"{method} {path} lists no responses"
                for code in operation["responses"]:
                    assert code.isdigit() and 100 <= int(code) <= 599
        refs = all_refs(document)
        assert refs
        for ref in refs:
            assert isinstance(resolve(document, {"$ref": ref}), dict)

    def test_security_schemes_used_are_declared(self) -> None:
        """Every security requirement names a declared security scheme."""
        document = openapi.document()
        declared = set(document["components"]["securitySchemes"])
        for item in document["paths"].values():
            for operation in item.values():
                for requirement in operation.get("security", []):
                    assert set(requirement) <= declared

    async def test_served_document_is_the_document(self, client: Client) -> None:
        """GET /api/openapi.json returns exactly openapi.document() as JSON."""
        response = await client.get("/api/openapi.json")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == json.loads(json.dumps(openapi.document()))


class TestDocumentIsValid:
    """The served document passes openapi-spec-validator as OpenAPI 3.0.3."""

    async def test_served_document_validates(self, client: Client) -> None:
        """GET /api/openapi.json is a valid OpenAPI 3.0.3 document: the validator reports no error at all."""
        document = await (await client.get("/api/openapi.json")).json()
        assert document["openapi"] == "3.0.3"
        validator = OpenAPIV30SpecValidator(document)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors()]
        assert errors == []


class TestRoutesMatchDocument:
    """Every registered route is documented with the same method, and every documented operation exists."""

    def test_router_and_document_list_the_same_operations(self, world: World) -> None:
        """The sets of (method, path) in the router and in the document are equal."""
        app = create_app(make_settings(), world.deps())
        in_router = router_operations(app)
        in_document = document_operations(openapi.document())
        assert in_router, "no routes registered"
        assert in_router - in_document == set(), "routes missing from the OpenAPI document"
        assert in_document - in_router == set(), "documented operations with no route"


class TestTokenRequestSchema:
    """The documented request body of /api/token states the limits the service enforces."""

    def schema(self) -> dict[str, Any]:
        operation = openapi.document()["paths"]["/api/token"]["post"]
        return resolve(openapi.document(), operation["requestBody"]["content"]["application/json"]["schema"])

    def test_documented_limits_are_the_enforced_ones(self) -> None:
        """uid range, channel and account lengths, enums and the expire default match memharbor.agora."""
        props = self.schema()["properties"]
        assert props["uid"]["minimum"] == 1
        assert props["uid"]["maximum"] == agora.MAX_UID
        assert props["channel"]["maxLength"] == agora.MAX_CHANNEL_BYTES
        assert props["user_account"]["maxLength"] == agora.MAX_ACCOUNT_BYTES
        assert props["user_account"]["minLength"] == 1
        assert set(props["role"]["enum"]) == {r.value for r in agora.Role}
        assert props["role"]["default"] == agora.Role.SUBSCRIBER
        assert set(props["version"]["enum"]) == {v.value for v in agora.TokenVersion}
        assert props["expire"]["default"] == agora.MAX_EXPIRE_S
        assert props["expire"]["minimum"] == 1
        assert self.schema()["required"] == ["channel"]

    async def test_documented_uid_bounds_are_accepted_and_outside_refused(self, client: Client) -> None:
        """The documented minimum and maximum uid get tokens; one below and one above get 400."""
        props = self.schema()["properties"]["uid"]
        headers = {"Authorization": "Bearer tok-admin"}
        for uid, expected in (
            (props["minimum"], 200),
            (props["maximum"], 200),
            (props["minimum"] - 1, 400),
            (props["maximum"] + 1, 400),
        ):
            response = await client.post("/api/token", json={"channel": CHANNEL, "uid": uid}, headers=headers)
            assert response.status == expected, uid


Setup = Callable[[World], None]
Request = Callable[[Client], Awaitable[Any]]


def _no_setup(_: World) -> None:
    return None


def _live_call(world: World) -> None:
    world.calls.add("pending")


def _firestore_down(world: World) -> None:
    world.calls.failure = Unavailable("down")
    world.health.failure = ConnectionError("down")


def _watcher_alive(world: World) -> None:
    world.health.beats = [beat("watcher", 30)]


ADMIN = {"Authorization": "Bearer tok-admin"}
ALICE = {"Authorization": "Bearer tok-alice"}
JSON = {"Content-Type": "application/json"}

SAMPLES: list[tuple[str, Setup, str, str, dict[str, str], bytes | None, int]] = [
    ("token-200", _no_setup, "POST", "/api/token", {**ADMIN, **JSON}, b'{"channel": "c1", "uid": 5}', 200),
    (
        "token-200-007",
        _no_setup,
        "POST",
        "/api/token",
        {**ADMIN, **JSON},
        b'{"channel": "c1", "user_account": "x", "version": "007"}',
        200,
    ),
    (
        "token-200-participant",
        _live_call,
        "POST",
        "/api/token",
        {**ALICE, **JSON},
        json.dumps({"channel": CHANNEL, "uid": 5}).encode(),
        200,
    ),
    ("token-400", _no_setup, "POST", "/api/token", {**ADMIN, **JSON}, b'{"channel": "c1", "uid": 0}', 400),
    ("token-400-json", _no_setup, "POST", "/api/token", {**ADMIN, **JSON}, b"{oops", 400),
    ("token-401", _no_setup, "POST", "/api/token", JSON, b'{"channel": "c1", "uid": 5}', 401),
    ("token-403", _no_setup, "POST", "/api/token", {**ALICE, **JSON}, b'{"channel": "c1", "uid": 5}', 403),
    ("token-413", _no_setup, "POST", "/api/token", {**ADMIN, **JSON}, b'{"p": "' + b"x" * 70000 + b'"}', 413),
    ("token-415", _no_setup, "POST", "/api/token", {**ADMIN, "Content-Type": "text/plain"}, b"{}", 415),
    (
        "token-503",
        _firestore_down,
        "POST",
        "/api/token",
        {**ALICE, **JSON},
        json.dumps({"channel": CHANNEL, "uid": 5}).encode(),
        503,
    ),
    ("health-200", _watcher_alive, "GET", "/api/health", {}, None, 200),
    ("health-200-degraded", _no_setup, "GET", "/api/health", {}, None, 200),
    ("health-503", _firestore_down, "GET", "/api/health", {}, None, 503),
    ("openapi-200", _no_setup, "GET", "/api/openapi.json", {}, None, 200),
]


class TestResponsesMatchDocument:
    """Sample requests get a status the document lists, with a JSON body that fits the documented schema."""

    @pytest.mark.parametrize(
        ("setup", "method", "path", "headers", "data", "expected"),
        [sample[1:] for sample in SAMPLES],
        ids=[sample[0] for sample in SAMPLES],
    )
    async def test_sample_response_is_documented(
        self,
        client: Client,
        world: World,
        setup: Setup,
        method: str,
        path: str,
        headers: dict[str, str],
        data: bytes | None,
        expected: int,
    ) -> None:
        """The status is the expected one and documented; the body fits its schema (no undocumented key)."""
        setup(world)
        response = await client.request(method, path, headers=headers, data=data)
        assert response.status == expected
        assert response.content_type == "application/json"
        shapes = await ResponseShapes.served(client)
        shapes.check(await response.json(), path, method, response.status)

    async def test_error_bodies_name_documented_fields(self, client: Client) -> None:
        """A 400's `field` names a property of the documented request schema (or the body itself)."""
        schema = resolve(
            openapi.document(),
            openapi.document()["paths"]["/api/token"]["post"]["requestBody"]["content"]["application/json"]["schema"],
        )
        bodies: list[dict[str, Any]] = [
            {"uid": 1},
            {"channel": "c", "uid": -1},
            {"channel": "c", "user_account": "é"},
            {"channel": "c", "uid": 1, "role": "x"},
            {"channel": "c", "uid": 1, "expire": 0},
            {"channel": "c", "uid": 1, "version": "1"},
        ]
        for body in bodies:
            response = await client.post("/api/token", json=body, headers=ADMIN)
            assert response.status == 400
            assert (await response.json())["field"] in {*schema["properties"], "body"}
