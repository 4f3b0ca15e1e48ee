"""A session reads the environment once per host, not on every call: an API behind a proxy is
reached through it, one named in ``NO_PROXY`` directly, host by host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hull_planhat_pipelines.clients.http import ApiSession, RetryPolicy
from hull_planhat_pipelines_tests.clients.local_http import LocalHttp, serving

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy")
NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")


@pytest.fixture
def recorder() -> Iterator[LocalHttp]:
    with serving() as server:
        yield server


def _session(base_url: str) -> ApiSession:
    return ApiSession("planhat", base_url, policy=RetryPolicy(attempts=1))


def _environment(monkeypatch: pytest.MonkeyPatch, proxy: str, no_proxy: str | None) -> None:
    """Every proxy variable set to ``proxy``; ``NO_PROXY`` set to ``no_proxy``, or unset."""
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy)
    for name in NO_PROXY_VARIABLES:
        if no_proxy is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, no_proxy)


DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there


def test_an_api_behind_a_proxy_is_reached_through_it(
    recorder: LocalHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, recorder.url, None)
    with _session("http://planhat.example.test") as session:
        assert session.json("GET", "/companies") == {"ok": True}
        assert session.json("GET", "/endusers") == {"ok": True}
    assert recorder.lines == [
        "GET http://planhat.example.test/companies HTTP/1.1",
        "GET http://planhat.example.test/endusers HTTP/1.1",
    ]


def test_an_api_named_in_no_proxy_is_reached_directly(
    recorder: LocalHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, DEAD_PROXY, "127.0.0.1")
    with _session(recorder.url) as session:
        assert session.json("GET", "/companies") == {"ok": True}
    assert recorder.lines == ["GET /companies HTTP/1.1"]


def test_no_proxy_is_judged_per_host_not_once_for_the_api(
    recorder: LocalHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's calls to another host (an absolute URL) follow that host's rule."""
    _environment(monkeypatch, DEAD_PROXY, "127.0.0.1")
    with _session("http://planhat.example.test") as session:
        assert session.json("GET", f"{recorder.url}/companies") == {"ok": True}
    assert recorder.lines == ["GET /companies HTTP/1.1"]
