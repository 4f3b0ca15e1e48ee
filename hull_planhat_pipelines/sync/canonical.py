"""The pipeline's JSON forms, each named: what it hashes, fingerprints, compares and stores.

Every form sorts keys except the wire and row forms, so equal values give equal text, and
writes values JSON has no type for (timestamps, decimals) with ``str`` (the row form: its own
way, below). The forms differ where texts
were already stored in them: changing a form's bytes would change every stored fingerprint
or text written in it (every record would look changed and be sent again after an upgrade), so
each form keeps its exact output and a test pins it.

- ``canonical_json`` / ``canonical_hash``: standard separators and ASCII escapes; outbox bodies,
  sync-log details, scope and segment hashes, sensor cursors, Planhat record texts.
- ``value_json`` / ``value_text``: compact, UTF-8 kept, integral numbers written as integers;
  Hull profile attribute values, compared as text (``1.0`` and ``1`` are one value).
- ``content_json`` / ``content_hash``: compact, UTF-8 kept; delivery fingerprints and their
  ``fields`` lists (the caller leaves nulls out and writes integral numbers as integers first:
  ``sync.planhat.fingerprints.canonical_content``).
- ``wire_json``: compact, keys in their order, ASCII escapes; a request body as sent, so a
  batch's measured size is the size sent.
- ``row_json``: compact, keys in their order, UTF-8 kept; the ``record`` and ``fields`` texts of
  Copper rows, hashed to tell a changed row from a re-fetch of the same. It was ``wire_json``'s
  bytes before: a row stored then with non-ASCII text (or a number the two write apart,
  ``1e+16`` and ``1e16``) is rewritten once by its first fetch after the upgrade, mapped again
  (the mapping reads both forms as the same values), and found unchanged: nothing is sent on.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec

# Built once (``json.dumps`` with options builds an encoder a call). No circular-reference
# check: a value decoded from JSON or built from rows cannot hold itself, and the check costs a
# fifth of an encoding; the bytes are the same.
_CANONICAL = json.JSONEncoder(sort_keys=True, default=str, check_circular=False)
_CONTENT = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str, check_circular=False
)
_WIRE = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False)
_ROW = msgspec.json.Encoder(enc_hook=str)
"""About ten times faster than ``json``'s encoders (two encodings a Copper record were the
largest cost of a fetch after the requests). Timestamps and decimals are written its own way
(ISO text, decimal text); a Copper row holds JSON types only."""


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text: equal values, equal text."""
    return _CANONICAL.encode(value)


def canonical_hash(value: Any) -> str:
    """sha256 hex of ``value``'s canonical JSON: a digest that changes when the value does."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def value_json(value: Any) -> str:
    """A profile value as text: sorted keys, no spaces, integral numbers as integers.

    ``{"currency": "USD", "amount": 1.0}`` and ``{"amount":1,"currency":"USD"}`` are the same
    value: comparing these texts is comparing values (DuckDB writes doubles as ``1.0``, Copper
    may send ``1``).
    """
    return content_json(_integral(value))


def value_text(text: str | None) -> str | None:
    """``value_json`` of JSON text (None stays None)."""
    return None if text is None else value_json(json.loads(text))


def content_json(value: Any) -> str:
    """Compact JSON with sorted keys and UTF-8 kept: the text a delivery fingerprint hashes."""
    return _CONTENT.encode(value)


def content_hash(value: Any) -> str:
    """sha256 hex of ``content_json`` (UTF-8): a delivered payload's fingerprint."""
    return hashlib.sha256(content_json(value).encode("utf-8")).hexdigest()


def wire_json(value: Any) -> str:
    """Compact JSON, keys in their order: a request body exactly as the clients send it."""
    return _WIRE.encode(value)


def row_json(value: Any) -> str:
    """A Copper row's text. What msgspec refuses (a lone surrogate: half an emoji cut by a
    truncation) is written as ``wire_json`` writes it, escaped: the mapping then skips that one
    record ("Invalid fields JSON") instead of the fetch failing. A NaN or an infinity (only an
    answer that is not JSON can carry one) is written ``null``: JSON has no such number."""
    try:
        return _ROW.encode(value).decode()
    except (msgspec.EncodeError, TypeError, UnicodeEncodeError, OverflowError):
        return _WIRE.encode(value)
