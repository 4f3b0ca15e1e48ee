"""An enduser whose key changes in Hull stays one enduser in Planhat.

Endusers are keyed by external id, else email. When a person's email changes in Copper, the
payload's key is new to us; sent as it is, Planhat finds no enduser with that email and creates
a second one beside the old. The payload carries the ``_id`` of the enduser Planhat holds for
the profile instead, and Planhat updates it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest

from hull_planhat_pipelines_tests.assets.test_outgoing_assets import Stack, _started


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with _started(tmp_path) as started:
        yield started


def test_a_changed_email_updates_the_enduser_planhat_holds_instead_of_adding_one(
    stack: Stack,
) -> None:
    stack.cycle()
    rows = stack.query(
        "select u.hull_id, u.email, a from hull.users u, unnest(u.anonymous_ids) t(a)"
        " where u.external_id is null and u.email is not null and a like 'copper-person:%'"
        " and 'email:' || u.email in (select key from planhat.delivery_fingerprints"
        " where target = 'endusers') order by u.hull_id limit 1"
    )
    assert rows, "no delivered enduser keyed by its email"
    hull_id, old_email, anonymous = rows[0]
    [before] = [e for e in stack.planhat.endusers() if e.get("email") == old_email]

    person_id = int(anonymous.split(":", 1)[1])
    record = stack.copper.record("people", person_id)
    assert record is not None
    new_email = "renamed." + old_email
    changed = copy.deepcopy(record)
    changed["emails"] = [{"email": new_email, "category": "work"}, *record["emails"][1:]]
    changed["date_modified"] = max(stack.copper.clock(), record["date_modified"] + 1)
    stack.copper.upsert_records("people", [changed])
    held = stack.query("select anonymous_ids from hull.users where hull_id = ?", [hull_id])[0][0]
    leads = [int(a.split(":", 1)[1]) for a in held if a.startswith("copper-lead:")]
    if leads:  # its converted lead is fetched with it (the lead's email claims nothing then)
        stack.copper.touch("leads", leads, at=changed["date_modified"])
    stack.planhat.rest.clear_requests()
    stack.cycle()

    assert stack.query("select email from hull.users where hull_id = ?", [hull_id]) == [
        (new_email,)
    ]
    sent = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    renamed = [i for i in sent if i.get("email") == new_email]
    assert [i.get("_id") for i in renamed] == [before["_id"]]
    assert not [e for e in stack.planhat.endusers() if e.get("email") == old_email]
    [after] = [e for e in stack.planhat.endusers() if e.get("email") == new_email]
    assert (after["_id"], after.get("companyId")) == (before["_id"], before.get("companyId"))

    # taken: the next cycle sends nothing for it
    stack.planhat.rest.clear_requests()
    stack.cycle()
    again = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    assert not [i for i in again if i.get("email") == new_email]


def _edit_person(stack: Stack, hull_id: str, person_id: int, email: str, **changes: object) -> None:
    """The person's first email becomes ``email`` in Copper, with ``changes`` (its converted
    lead fetched with it)."""
    record = stack.copper.record("people", person_id)
    assert record is not None
    changed = copy.deepcopy(record)
    changed["emails"] = [{"email": email, "category": "work"}, *record["emails"][1:]]
    changed.update(changes)
    changed["date_modified"] = max(stack.copper.clock(), record["date_modified"] + 1)
    stack.copper.upsert_records("people", [changed])
    held = stack.query("select anonymous_ids from hull.users where hull_id = ?", [hull_id])[0][0]
    leads = [int(a.split(":", 1)[1]) for a in held if a.startswith("copper-lead:")]
    if leads:
        stack.copper.touch("leads", leads, at=changed["date_modified"])


def test_an_email_changed_and_changed_back_leaves_planhat_with_the_person_of_now(
    stack: Stack,
) -> None:
    """A -> B -> A: the return to A is a change Planhat has not seen (it holds B), though a
    payload under ``email:A`` was delivered once, long ago. Each change clears a field in the
    same edit (the title with the rename, the phone with the return): Planhat's enduser loses
    it too, though neither key's own payload ever lacked it before."""
    stack.cycle()
    rows = stack.query(
        "select u.hull_id, u.email, a from hull.users u, unnest(u.anonymous_ids) t(a)"
        " where u.external_id is null and u.email is not null and a like 'copper-person:%'"
        " and 'email:' || u.email in (select key from planhat.delivery_fingerprints"
        " where target = 'endusers') order by u.hull_id"
    )
    in_planhat = {e.get("email"): e for e in stack.planhat.endusers()}
    chosen = [
        (hull_id, email, int(anonymous.split(":", 1)[1]))
        for hull_id, email, anonymous in rows
        if in_planhat.get(email, {}).get("position") and in_planhat.get(email, {}).get("phone")
    ]
    assert chosen, "no delivered enduser keyed by its email with a position and a phone"
    hull_id, first_email, person_id = chosen[0]
    before = in_planhat[first_email]
    renamed = "renamed." + first_email

    _edit_person(stack, hull_id, person_id, renamed, title=None)
    stack.cycle()
    [middle] = [e for e in stack.planhat.endusers() if e["_id"] == before["_id"]]
    assert middle.get("email") == renamed
    assert not middle.get("position")
    assert middle.get("phone") == before["phone"]

    _edit_person(stack, hull_id, person_id, first_email, phone_numbers=[])
    stack.cycle()
    assert stack.query("select email from hull.users where hull_id = ?", [hull_id]) == [
        (first_email,)
    ]
    held = [e for e in stack.planhat.endusers() if e.get("email") in (first_email, renamed)]
    assert [(e["_id"], e.get("email")) for e in held] == [(before["_id"], first_email)]
    assert not held[0].get("position")
    assert not held[0].get("phone")

    # settled: the next cycle sends nothing for it
    stack.planhat.rest.clear_requests()
    stack.cycle()
    again = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    assert not [i for i in again if i.get("email") in (first_email, renamed)]


def test_a_person_moved_to_another_company_stays_one_enduser_in_planhat(stack: Stack) -> None:
    """Copper moves a person to another company Planhat has. Planhat matches an email only
    when it is unique, and may look it up within the item's company: sent as it is, the
    payload could create a second enduser in the new company beside the old one. Addressed
    by the ``_id`` of the enduser Planhat holds for the profile, it moves that enduser."""
    stack.cycle()
    rows = stack.query(
        "select u.hull_id, u.email, a, acc.external_id from hull.users u"
        " join hull.accounts acc on acc.hull_id = u.account_hull_id,"
        " unnest(u.anonymous_ids) t(a)"
        " where u.external_id is null and u.email is not null and a like 'copper-person:%'"
        " and 'email:' || u.email in (select key from planhat.delivery_fingerprints"
        " where target = 'endusers') order by u.hull_id"
    )
    companies = {c.get("externalId"): c for c in stack.planhat.companies()}
    in_planhat = {e.get("email"): e for e in stack.planhat.endusers()}
    chosen = [r for r in rows if r[1] in in_planhat and r[3] in companies]
    assert chosen, "no delivered enduser of a company Planhat has"
    hull_id, email, anonymous, old_company = chosen[0]
    before = in_planhat[email]
    others = stack.query(
        "select distinct a.external_id, c from hull.accounts a, unnest(a.anonymous_ids) t(c)"
        " where c like 'copper:%' and a.external_id is not null"
        " and list_contains(a.segments, 'Customer accounts') order by 1"
    )
    target = next(
        (ext, int(c.split(":", 1)[1]))
        for ext, c in others
        if ext != old_company and ext in companies
    )
    person_id = int(anonymous.split(":", 1)[1])
    record = stack.copper.record("people", person_id)
    assert record is not None
    changed = copy.deepcopy(record)
    changed["company_id"] = target[1]
    changed["date_modified"] = max(stack.copper.clock(), record["date_modified"] + 1)
    stack.copper.upsert_records("people", [changed])
    stack.planhat.rest.clear_requests()
    stack.cycle()
    sent = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]

    assert stack.query(
        "select a.external_id from hull.users u join hull.accounts a"
        " on a.hull_id = u.account_hull_id where u.hull_id = ?",
        [hull_id],
    ) == [(target[0],)]
    moved = [i for i in sent if i.get("email") == email]
    assert [(i.get("_id"), i.get("companyExternalId")) for i in moved] == [
        (before["_id"], target[0])
    ]
    held = [e for e in stack.planhat.endusers() if e.get("email") == email]
    assert [e["_id"] for e in held] == [before["_id"]]
    assert held[0].get("companyId") == companies[target[0]]["_id"]

    # taken: the next cycle sends nothing for it
    stack.planhat.rest.clear_requests()
    stack.cycle()
    again = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    assert not [i for i in again if i.get("email") == email]
