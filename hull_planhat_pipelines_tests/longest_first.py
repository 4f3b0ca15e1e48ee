"""The longest test files start first.

Two workers take one file at a time, and xdist orders files by their number of tests, so a
file of one long test (the browser's, three minutes) started last and ran alone on one core
while the other had nothing left. Started first, the long files overlap the many short ones.
``LONGEST`` is measured (``--durations``), longest first; every other file keeps its place.
"""

from __future__ import annotations

import pytest

LONGEST = (
    "assets/test_enduser_identity_change.py",
    "test_ui_browser.py",
    "test_delivery_faults.py",
    "assets/test_outgoing_assets.py",
    "test_follow.py",
    "assets/test_payload_scope.py",
    "assets/test_command_line_poll.py",
)


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    for rank, suffix in enumerate(LONGEST):
        if path.endswith(suffix):
            return rank
    return len(LONGEST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: a file's tests, and the other files, keep their order
