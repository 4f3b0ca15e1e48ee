"""Answers are decoded by a strict, fast decoder first; what it refuses is decoded as before, so
the faster path refuses nothing that was read before and changes no value it reads."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from hull_planhat_pipelines.clients.http import ApiResponseError, ApiSession, RetryPolicy
from hull_planhat_pipelines_tests.clients.local_http import LocalHttp, serving


@pytest.fixture
def answers() -> Iterator[tuple[LocalHttp, ApiSession]]:
    with serving() as server:
        session = ApiSession("copper", server.url, policy=RetryPolicy(attempts=1))
        try:
            yield server, session
        finally:
            session.close()


def _get(answers: tuple[LocalHttp, ApiSession], body: bytes, content_type: str) -> object:
    server, session = answers
    server.bodies["/answer"] = (body, content_type)
    return session.json("GET", "/answer")


JSON = "application/json"


def test_utf8_and_escaped_text_decode_alike(answers: tuple[LocalHttp, ApiSession]) -> None:
    raw = _get(answers, '{"name":"Zoë → 王芳"}'.encode(), JSON)
    escaped = _get(answers, b'{"name":"Zo\\u00eb \\u2192 \\u738b\\u82b3"}', JSON)
    assert raw == escaped == {"name": "Zoë → 王芳"}


def test_integers_keep_every_digit(answers: tuple[LocalHttp, ApiSession]) -> None:
    body = b'{"id": 123456789012345678901234567890, "small": -9223372036854775809}'
    assert _get(answers, body, JSON) == {
        "id": 123456789012345678901234567890,
        "small": -9223372036854775809,
    }


def test_what_the_strict_decoder_refuses_is_read_as_before(
    answers: tuple[LocalHttp, ApiSession],
) -> None:
    assert _get(answers, b'{"big": 1e400}', JSON) == {"big": math.inf}
    # a body in the charset its header names (not UTF-8) is decoded in that charset
    latin = _get(answers, '{"name":"Zoë"}'.encode("latin-1"), f"{JSON}; charset=ISO-8859-1")
    assert latin == {"name": "Zoë"}
    assert _get(answers, b"\xef\xbb\xbf" + b'{"ok": true}', JSON) == {"ok": True}
    # bytes that are UTF-8 too, in the charset the header names: read in that charset, as before
    named = _get(answers, '{"name":"é"}'.encode(), f"{JSON}; charset=ISO-8859-1")
    assert named == {"name": "Ã©"}
    assert _get(answers, '{"name":"é"}'.encode(), f"{JSON}; charset=UTF8") == {"name": "é"}


def test_blank_answers_are_none_and_pages_are_errors(
    answers: tuple[LocalHttp, ApiSession],
) -> None:
    assert _get(answers, b"", JSON) is None
    assert _get(answers, b" \r\n\t", JSON) is None
    with pytest.raises(ApiResponseError, match="malformed JSON"):
        _get(answers, b"<html>Bad gateway</html>", "text/html")
