"""Payloads from changed profiles only: after a cycle, the payload assets map the profiles the
change log names (plus pending and never-fingerprinted ones), not every profile; what reaches
Planhat is the same. Copper and Planhat over real HTTP, as ``hull-planhat sync`` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hull_planhat_pipelines.assets import outgoing
from hull_planhat_pipelines.warehouse import payload_scope
from hull_planhat_pipelines_tests.assets.test_outgoing_assets import (
    OWNER,
    SEED,
    Stack,
    _segment,
    _started,
)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool, int]]:
    """(table, scoped, rows) of every profile read of the payload assets."""
    seen: list[tuple[str, bool, int]] = []
    read = outgoing.read_rows

    def spy(conn: Any, table: str, where: str | None) -> Any:
        frame = read(conn, table, where)
        seen.append((table, where is not None, 0 if frame is None else len(frame)))
        if frame is not None and table == "hull.users":
            read_ids.update(str(i) for i in frame["hull_id"])
        return frame

    monkeypatch.setattr(outgoing, "read_rows", spy)
    return seen


read_ids: set[str] = set()
"""Every ``hull.users`` row the payload assets read since the test last cleared it."""


def _waiting(stack: Stack) -> set[str]:
    """In-segment users never delivered because Planhat has not their company."""
    rows = stack.query(
        "select distinct object_id from ops.sync_log where event = 'outgoing.user.skip' "
        "and reason = 'Account not in Planhat' and object_id is not null"
    )
    return {str(r[0]) for r in rows}


def _enduser_items(stack: Stack) -> list[dict[str, Any]]:
    return [item for r in stack.planhat.rest.recorded("PUT", r"^/endusers$") for item in r.body]


def test_one_edited_person_is_the_one_enduser_mapped_and_sent(
    tmp_path: Path, reads: list[tuple[str, bool, int]]
) -> None:
    # every account with an external id is a customer: the seed's invalid owner too, whose
    # company is never sent, so its users wait for it (skipped "Account not in Planhat")
    with _started(tmp_path, _segment("external_id is not null")) as stack:
        stack.cycle()
        [(total,)] = stack.query("select count(*) from hull.users")
        assert ("hull.users", False, total) in reads  # the first cycle maps every profile
        contacts = stack.query(
            "select u.hull_id, u.anonymous_ids from hull.users u"
            " where list_contains(u.segments, 'Customers') and u.email is not null"
            " and u.account_hull_id in (select hull_id from hull.accounts where external_id in"
            " (select key from planhat.delivery_fingerprints where target = 'companies'))"
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
        read_ids.clear()
        stack.cycle()  # nothing changed: nothing mapped twice, nothing sent
        assert len(_enduser_items(stack)) == sent_before + 1
        assert all(scoped for table, scoped, _ in reads if table == "hull.users")
        # users waiting for a company Planhat does not have are not mapped (and skipped) again
        waiting = _waiting(stack)
        assert waiting, "the seed has users whose company Planhat lacks"
        assert not (read_ids & waiting)


def _echoed(
    stack: Stack, having: str = "bool_and(c.grp in ('planhat', 'anonymous_ids'))"
) -> set[str]:
    """Users just delivered (the fingerprint under their key is the one they were sent with)
    whose only change since the enduser payloads last mapped is what the snapshot after the
    delivery wrote back: ``planhat/*`` attributes and Planhat's anonymous id."""
    [(seq,)] = stack.query("select seq from ops.payload_scope where target = 'endusers'")
    rows = stack.query(
        "select c.hull_id from ops.hull_changes c"
        " join ops.payload_pending p on p.target = 'endusers' and p.hull_id = c.hull_id"
        " join planhat.delivery_fingerprints f on f.target = 'endusers' and f.key = p.key"
        " and f.fingerprint = p.fingerprint"
        " where c.kind = 'user' and c.seq > ?"
        f" group by c.hull_id having {having}",
        [seq],
    )
    return {str(r[0]) for r in rows}


def test_what_planhat_echoes_after_a_delivery_is_not_mapped_again(
    tmp_path: Path, reads: list[tuple[str, bool, int]]
) -> None:
    with _started(tmp_path) as stack:
        stack.cycle()
        echoed = _echoed(stack)
        assert echoed, "the snapshot after the delivery wrote planhat/* back to the users sent"
        sent_before = len(_enduser_items(stack))
        read_ids.clear()

        stack.cycle()

        assert not (read_ids & echoed)
        assert len(_enduser_items(stack)) == sent_before


def test_an_echo_is_mapped_again_when_the_mapping_reads_planhat_attributes(
    tmp_path: Path, reads: list[tuple[str, bool, int]]
) -> None:
    def mapped_back(config: dict[str, Any]) -> None:
        config["planhat"]["user_attributes"]["planhat/first_name"] = "custom.First name"

    with _started(tmp_path, mapped_back) as stack:
        stack.cycle()
        echoed = _echoed(stack, "bool_or(c.grp = 'planhat')")
        assert echoed
        read_ids.clear()

        stack.cycle()

        assert echoed <= read_ids


def test_users_waiting_for_their_company_are_sent_in_the_cycle_that_sends_it(
    tmp_path: Path, reads: list[tuple[str, bool, int]]
) -> None:
    # every account with an external id is a customer: the seed's invalid owner too, whose
    # users wait for their company until its owner is mended in Copper
    with _started(tmp_path, _segment("external_id is not null")) as stack:
        stack.cycle()  # it maps every profile and keeps the waiting seed: the next reads it
        assert stack.query("select target from ops.payload_tracked") == [("endusers",)]
        waiting = _waiting(stack)
        rows = stack.query(
            "select u.email, a.external_id, a.anonymous_ids from hull.users u"
            " join hull.accounts a on a.hull_id = u.account_hull_id"
            " where u.email is not null and u.hull_id in (select unnest(?::varchar[]))",
            [sorted(waiting)],
        )
        assert rows, "the seed has users waiting for their company"
        _, external_id, anonymous_ids = rows[0]
        emails = {email for email, ext, _ in rows if ext == external_id}
        company_id = int(next(a for a in anonymous_ids if a.startswith("copper:")).split(":")[1])
        sent_before = len(_enduser_items(stack))
        read_ids.clear()

        owner = sorted(stack.valid_owner_ids())[0]
        stack.copper.edit("companies", company_id, {"assignee_planhat_id": owner})
        found: list[payload_scope.Waiting] = []
        test = payload_scope._waiting

        def spy(*args: Any) -> payload_scope.Waiting:
            found.append(test(*args))
            return found[-1]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(payload_scope, "_waiting", spy)
            stack.cycle()

        # the users came in as those of a company known since, not by a scan of every user
        assert [(w.replace, external_id in w.added) for w in found] == [(False, True)]
        assert (external_id,) in stack.query("select external_id from ops.payload_known_companies")

        assert external_id in {item.get("externalId") for item in stack.company_items()}
        sent = {item.get("email") for item in _enduser_items(stack)[sent_before:]}
        assert emails <= sent
        [(total,)] = stack.query("select count(*) from hull.users")
        assert len(read_ids) < total  # the users tested, not every user


def _owner_skips(stack: Stack, hull_id: str) -> int:
    [(n,)] = stack.query(
        "select count(*) from ops.sync_log where event = 'outgoing.account.skip'"
        " and reason = 'Invalid Owner ID' and object_id = ?",
        [hull_id],
    )
    return int(n)


def test_an_account_skipped_for_its_owner_is_logged_once_until_it_or_the_planhat_users_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every account with an external id is a customer: the seed's invalid owner too
    mapped: list[set[str]] = []
    read = outgoing.read_rows

    def spy(conn: Any, table: str, where: str | None) -> Any:
        frame = read(conn, table, where)
        if table == "hull.accounts" and frame is not None:
            mapped.append({str(i) for i in frame["hull_id"]})
        return frame

    monkeypatch.setattr(outgoing, "read_rows", spy)
    with _started(tmp_path, _segment("external_id is not null")) as stack:
        stack.cycle()
        valid = stack.valid_owner_ids()
        invalid = {
            hull_id: (ext, attributes[OWNER])
            for hull_id, (ext, attributes) in stack.accounts("external_id is not null").items()
            if attributes.get(OWNER) is not None and attributes[OWNER] not in valid
        }
        hull_id, (external_id, owner) = next(
            (h, v) for h, v in invalid.items() if v[0] == f"ACC-{SEED}-000002"
        )
        assert _owner_skips(stack, hull_id) == 1
        assert external_id not in {i.get("externalId") for i in stack.company_items()}

        mapped.clear()
        stack.cycle()  # nothing changed: the skipped accounts are neither mapped nor logged
        assert mapped and not any(set(invalid) & ids for ids in mapped)
        assert _owner_skips(stack, hull_id) == 1
        assert {(h,) for h in invalid} <= set(
            stack.query("select hull_id from ops.payload_skipped where target = 'companies'")
        )

        # its owner joins the Planhat team: every company is mapped again, and it is sent
        stack.planhat.add_users([{"_id": owner, "email": "owner@example.com", "name": "Owner"}])
        mapped.clear()
        stack.cycle()
        assert any(hull_id in ids for ids in mapped)
        assert external_id in {i.get("externalId") for i in stack.company_items()}
        assert (hull_id,) not in stack.query("select hull_id from ops.payload_skipped")
        assert _owner_skips(stack, hull_id) == 1


def test_a_skipped_account_whose_owner_is_mended_is_sent_by_the_next_cycle(
    tmp_path: Path,
) -> None:
    with _started(tmp_path, _segment("external_id is not null")) as stack:
        stack.cycle()
        stack.cycle()  # the skip is kept: the account is out of the seed from now on
        [(hull_id, anonymous_ids)] = stack.query(
            "select hull_id, anonymous_ids from hull.accounts where external_id = ?",
            [f"ACC-{SEED}-000002"],
        )
        assert (hull_id,) in stack.query("select hull_id from ops.payload_skipped")
        company_id = int(next(a for a in anonymous_ids if a.startswith("copper:")).split(":")[1])
        stack.copper.edit(
            "companies", company_id, {"assignee_planhat_id": sorted(stack.valid_owner_ids())[0]}
        )
        stack.cycle()
        assert f"ACC-{SEED}-000002" in {i.get("externalId") for i in stack.company_items()}
        assert (hull_id,) not in stack.query("select hull_id from ops.payload_skipped")
