"""The pipeline's JSON forms, each named: what it hashes, fingerprints, compares and stores.

Every form sorts keys except the wire form, so equal values give equal text, and writes
values JSON has no type for (timestamps, decimals) with ``str``. The forms differ where texts
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
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Built once (``json.dumps`` with options builds an encoder a call). No circular-reference
# check: a value decoded from JSON or built from rows cannot hold itself, and the check costs a
# fifth of an encoding; the bytes are the same.
_CANONICAL = json.JSONEncoder(sort_keys=True, default=str, check_circular=False)
_CONTENT = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str, check_circular=False
)
_WIRE = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False)


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
