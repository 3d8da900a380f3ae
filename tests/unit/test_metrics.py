"""token_http's request metrics and probes, and the shared metrics server of the worker processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from memharbor import metrics
from memharbor.metrics import CONTENT_TYPE, exposition
from memharbor.metrics_server import MetricsServer
from memharbor.settings import http_settings
from tests.support.api_worlds import AS_ALICE, CallWorld, TokenWorld, make_settings
from token_http.app import create_app
from token_http.metrics import HttpMetrics

Client = TestClient[web.Request, web.Application]
REQUESTS = "memharbor_http_request_duration_seconds"


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` in a Prometheus text exposition."""
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def requests_by_label(text: str) -> dict[tuple[str, str, str], float]:
    """Requests counted per (route, method, status), from the histogram's `_count` series."""
    return {(s["route"], s["method"], s["status"]): v for s, v in samples(text, f"{REQUESTS}_count")}


async def scrape(client: Client) -> str:
    """The body of GET /metrics, after checking it is Prometheus' text format."""
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    return await response.text()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """token_http over the call routes' fakes, with metrics of its own."""
    world = CallWorld()
    async with TestClient(TestServer(create_app(make_settings(), world.deps()))) as test_client:
        yield test_client


class TestRequestMetrics:
    """Every answered request is counted and timed under its route's pattern, method and status."""

    async def test_route_label_is_the_pattern_not_the_path(self, client: Client) -> None:
        """Two call ids make one series labelled with the pattern; no id appears in the metrics."""
        for call_id in ("first-call-id", "second-call-id"):
            await client.get(f"/api/call/status/{call_id}", headers=AS_ALICE)
        text = await scrape(client)
        counted = {key: n for key, n in requests_by_label(text).items() if key[0].startswith("/api/call/status")}
        assert [key[:2] for key in counted] == [("/api/call/status/{call_id}", "GET")]
        assert sum(counted.values()) == 2
        assert "first-call-id" not in text and "second-call-id" not in text

    async def test_statuses_are_labelled_separately(self, client: Client) -> None:
        """A well-formed and a malformed token request land in the 200 and 400 series of /api/token."""
        ok = await client.post("/api/token", json={"channel": "c1", "uid": 1}, headers={"Authorization": "Bearer x"})
        bad = await client.post("/api/token", json={"channel": ""}, headers=AS_ALICE)
        counted = requests_by_label(await scrape(client))
        assert counted[("/api/token", "POST", str(ok.status))] == 1
        assert bad.status == 400 and counted[("/api/token", "POST", "400")] == 1

    async def test_unmatched_paths_and_methods_have_bounded_labels(self, client: Client) -> None:
        """Unknown paths count as `unmatched`, WebDAV and cache methods as `other`: neither adds a series per value."""
        for path in ("/nope/1", "/nope/2", "/wp-admin.php"):
            assert (await client.get(path)).status == 404
        for method in ("PROPFIND", "PURGE"):
            await client.request(method, "/nope/3")
        counted = requests_by_label(await scrape(client))
        assert counted[("unmatched", "GET", "404")] == 3
        assert sum(n for (route, method, _), n in counted.items() if method == "other") == 2
        assert {route for route, _, _ in counted} == {"unmatched"}

    async def test_durations_land_in_the_histogram(self, client: Client) -> None:
        """The answered request's duration is in the buckets and the sum, in seconds."""
        await client.get("/api/openapi.json")
        text = await scrape(client)
        [(_, total)] = [(s, v) for s, v in samples(text, f"{REQUESTS}_sum") if s["route"] == "/api/openapi.json"]
        buckets = {s["le"]: v for s, v in samples(text, f"{REQUESTS}_bucket") if s["route"] == "/api/openapi.json"}
        assert 0 < total < 5
        assert buckets["+Inf"] == 1 and buckets["0.001"] <= buckets["10.0"] == 1

    async def test_scrapes_and_probes_are_not_counted(self, client: Client) -> None:
        """/metrics, /livez and /readyz answer without adding to the request metrics."""
        for path in ("/metrics", "/livez", "/readyz", "/metrics"):
            assert (await client.get(path)).status in (200, 503)
        assert requests_by_label(await scrape(client)) == {}

    async def test_every_response_still_carries_a_request_id(self, client: Client) -> None:
        """The uncounted routes are still in the request context: they get an X-Request-ID."""
        for path in ("/metrics", "/livez", "/readyz"):
            assert len((await client.get(path)).headers["X-Request-ID"]) == 32


class TestRouteMetrics:
    """The per-route recorder used on the request path."""

    def test_repeated_observations_reuse_one_series(self) -> None:
        """Three observations of one (method, status) make one series counting three."""
        metrics = HttpMetrics()
        route = metrics.route("/api/token")
        for seconds in (0.002, 0.003, 0.2):
            route.observe("POST", 200, seconds)
        text = exposition(metrics.scrape()).decode()
        assert requests_by_label(text) == {("/api/token", "POST", "200"): 3}


class TestProbes:
    """/livez answers while the loop runs; /readyz needs Firestore's latest check and Agora credentials."""

    async def test_ready_when_firestore_answers(self) -> None:
        """With a healthy database and credentials both probes answer 200 `ok`."""
        world = TokenWorld()
        async with TestClient(TestServer(create_app(make_settings(), world.deps()))) as client:
            for path in ("/livez", "/readyz"):
                response = await client.get(path)
                assert (response.status, await response.json()) == (200, {"status": "ok"})

    async def test_not_ready_when_firestore_fails(self) -> None:
        """A failing ping makes /readyz 503 naming Firestore, while /livez stays 200."""
        world = TokenWorld()
        world.health.failure = RuntimeError("down")
        async with TestClient(TestServer(create_app(make_settings(), world.deps()))) as client:
            ready = await client.get("/readyz")
            assert ready.status == 503
            assert await ready.json() == {"status": "failing", "problems": ["firestore unreachable"]}
            assert (await client.get("/livez")).status == 200

    async def test_readiness_shares_the_health_cache(self) -> None:
        """/api/health and /readyz in a row make one Firestore ping, not two."""
        world = TokenWorld()
        async with TestClient(TestServer(create_app(make_settings(), world.deps()))) as client:
            await client.get("/api/health")
            await client.get("/readyz")
            await client.get("/readyz")
        assert world.health.pings == 1

    async def test_not_ready_without_agora_credentials(self) -> None:
        """Settings without AGORA_APP_ID/AGORA_APP_CERT make /readyz 503 naming them."""
        settings = http_settings({"FIREBASE_PROJECT_ID": "demo-probes"})
        async with TestClient(TestServer(create_app(settings, TokenWorld().deps()))) as client:
            ready = await client.get("/readyz")
            body = await ready.json()
        assert ready.status == 503 and body["problems"] == ["Agora credentials missing (AGORA_APP_ID, AGORA_APP_CERT)"]


class TestMetricsServer:
    """The workers' metrics server: one registry on /metrics, two probes of plain functions."""

    async def test_serves_metrics_and_probes(self) -> None:
        """/metrics renders the registry; a probe with problems answers 503 listing them, one without 200."""
        registry = CollectorRegistry()
        Counter("memharbor_test_events", "Events of the test", registry=registry).inc(3)
        problems: list[str] = []
        server = MetricsServer(registry, live=lambda: [], ready=lambda: list(problems), host="127.0.0.1", port=0)
        port = await server.start()
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                text = await (await http.get("/metrics")).text()
                assert samples(text, "memharbor_test_events_total") == [({}, 3.0)]
                assert (await http.get("/readyz")).status == 200
                problems.append("no claim sweep yet")
                ready = await http.get("/readyz")
                body: Any = await ready.json()
                assert (ready.status, body) == (503, {"status": "failing", "problems": ["no claim sweep yet"]})
                assert (await http.get("/livez")).status == 200
        finally:
            await server.close()

    async def test_close_frees_the_port(self) -> None:
        """After close, nothing answers on the port any more."""
        server = MetricsServer(CollectorRegistry(), live=list, ready=list, host="127.0.0.1", port=0)
        port = await server.start()
        await server.close()
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"http://127.0.0.1:{port}/livez")


def _observe_in_child(directory: Path, requests: int) -> int:
    """Fork a process that counts `requests` token requests in multiprocess mode under `directory`; its pid."""
    pid = os.fork()
    if pid == 0:  # the child: multiprocess mode changes only its own copy of prometheus-client
        code = 1
        try:
            metrics.use_multiprocess_dir(directory)
            route = HttpMetrics(directory).route("/api/token")
            for _ in range(requests):
                route.observe("POST", 200, 0.003)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return pid


class TestMultiprocessMode:
    """token_http's workers write to one directory; a scrape from any of them sums every worker."""

    def test_scrape_sums_every_worker(self, tmp_path: Path) -> None:
        """Two forked workers counting 2 and 3 requests make one series of 5, with both in the buckets."""
        first, second = _observe_in_child(tmp_path, 2), _observe_in_child(tmp_path, 3)
        assert first != second and len(list(tmp_path.glob("histogram_*.db"))) == 2
        text = exposition(HttpMetrics(tmp_path).scrape()).decode()
        assert requests_by_label(text) == {("/api/token", "POST", "200"): 5}
        buckets = {s["le"]: v for s, v in samples(text, f"{REQUESTS}_bucket")}
        assert (buckets["0.0025"], buckets["0.005"]) == (0, 5)

    def test_dead_workers_counts_stay(self, tmp_path: Path) -> None:
        """Marking a worker dead keeps its requests in the sums (only live gauges are dropped)."""
        pid = _observe_in_child(tmp_path, 4)
        metrics.process_exited(tmp_path, pid)
        assert requests_by_label(exposition(HttpMetrics(tmp_path).scrape()).decode()) == {
            ("/api/token", "POST", "200"): 4
        }

    def test_each_start_gets_a_fresh_directory_in_memory(self) -> None:
        """Two starts get two empty directories, on tmpfs when the machine has one; removal deletes them."""
        first, second = metrics.new_multiprocess_dir(), metrics.new_multiprocess_dir()
        try:
            assert first != second and list(first.iterdir()) == list(second.iterdir()) == []
            if metrics.MEMORY_FS.is_dir():
                assert first.parent == metrics.MEMORY_FS
        finally:
            metrics.remove_multiprocess_dir(first)
            metrics.remove_multiprocess_dir(second)
        assert not first.exists() and not second.exists()
