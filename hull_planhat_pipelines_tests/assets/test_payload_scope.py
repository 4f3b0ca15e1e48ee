"""Payloads from changed profiles only: after a cycle, the payload assets map the profiles the
change log names (plus pending and never-fingerprinted ones), not every profile; what reaches
Planhat is the same. Copper and Planhat over real HTTP, as ``hull-planhat sync`` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hull_planhat_pipelines.assets import outgoing
from hull_planhat_pipelines_tests.assets.test_outgoing_assets import Stack, _started


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool, int]]:
    """(table, scoped, rows) of every profile read of the payload assets."""
    seen: list[tuple[str, bool, int]] = []
    read = outgoing.read_rows

    def spy(conn: Any, table: str, where: str | None) -> Any:
        frame = read(conn, table, where)
        seen.append((table, where is not None, 0 if frame is None else len(frame)))
        return frame

    monkeypatch.setattr(outgoing, "read_rows", spy)
    return seen


def _enduser_items(stack: Stack) -> list[dict[str, Any]]:
    return [item for r in stack.planhat.rest.recorded("PUT", r"^/endusers$") for item in r.body]


def test_one_edited_person_is_the_one_enduser_mapped_and_sent(
    tmp_path: Path, reads: list[tuple[str, bool, int]]
) -> None:
    with _started(tmp_path) as stack:
        stack.cycle()
        [(total,)] = stack.query("select count(*) from hull.users")
        assert ("hull.users", False, total) in reads  # the first cycle maps every profile
        contacts = stack.query(
            "select u.hull_id, u.anonymous_ids from hull.users u"
            " where list_contains(u.segments, 'Customers') and u.email is not null"
            " and exists (select 1 from unnest(u.anonymous_ids) t(a)"
            " where a like 'copper-person:%')"
        )
        assert contacts, "the seed has contacts"
        hull_id, anonymous_ids = contacts[0]
        person_id = int(
            next(a for a in anonymous_ids if a.startswith("copper-person:")).split(":")[1]
        )
        sent_before = len(_enduser_items(stack))
        reads.clear()

        stack.copper.edit("people", person_id, {"title": "Head of Scoped Payloads"})
        stack.cycle()

        users_read = [(scoped, n) for table, scoped, n in reads if table == "hull.users"]
        assert users_read and all(scoped for scoped, _ in users_read)
        assert all(n < total for _, n in users_read)
        sent = _enduser_items(stack)[sent_before:]
        assert [item.get("position") for item in sent] == ["Head of Scoped Payloads"]
        [(pending,)] = stack.query(
            "select count(*) from ops.payload_pending where target = 'endusers' and hull_id = ?",
            [hull_id],
        )
        assert pending == 1

        reads.clear()
        stack.cycle()  # nothing changed: nothing mapped twice, nothing sent
        assert len(_enduser_items(stack)) == sent_before + 1
        assert all(scoped for table, scoped, _ in reads if table == "hull.users")
