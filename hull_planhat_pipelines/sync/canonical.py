"""The one canonical JSON form of the pipeline: what it hashes, fingerprints and stores.

Sorted keys, so equal values give equal text; ``default=str`` for values JSON has no type for
(timestamps, decimals); the standard separators and ASCII escapes most stored texts (outbox
bodies, sync-log details, scope and segment hashes, sensor cursors) were already written in,
so stored fingerprints and cursors stay valid.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text: equal values, equal text."""
    return json.dumps(value, sort_keys=True, default=str)


def canonical_hash(value: Any) -> str:
    """sha256 hex of ``value``'s canonical JSON: a digest that changes when the value does."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
