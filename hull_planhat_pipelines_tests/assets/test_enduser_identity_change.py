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
from typing import Any

import pytest

from hull_planhat_pipelines.cli import run_sync
from hull_planhat_pipelines.clients.delivery import NOT_SENT_ORDER
from hull_planhat_pipelines.sandbox.planhat_store import BulkResult, PlanhatStore
from hull_planhat_pipelines.sync.planhat.endusers import TAKEN_ENDUSER
from hull_planhat_pipelines_tests.assets.test_outgoing_assets import Stack, _started


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with _started(tmp_path) as started:
        yield started


@pytest.fixture(params=["in order", "in reverse"])
def either_order(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    """The stack, its Planhat applying an enduser bulk's items in order, or in reverse: the
    order Planhat applies them in is not documented, so nothing may depend on it."""
    if request.param == "in reverse":
        applied = PlanhatStore.bulk_upsert

        def reversed_bulk(
            store: PlanhatStore, model: str, items: list[Any], *, full_keys: bool = False
        ) -> BulkResult:
            if model == "endusers":
                items = list(reversed(items))
            return applied(store, model, items, full_keys=full_keys)

        monkeypatch.setattr(PlanhatStore, "bulk_upsert", reversed_bulk)
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


def _delivered_by_email(stack: Stack) -> list[tuple[str, str, int]]:
    """Users keyed by their email whose payload was delivered: hull id, email, person id."""
    rows = stack.query(
        "select u.hull_id, u.email, a from hull.users u, unnest(u.anonymous_ids) t(a)"
        " where u.external_id is null and u.email is not null and a like 'copper-person:%'"
        " and 'email:' || u.email in (select key from planhat.delivery_fingerprints"
        " where target = 'endusers') order by u.hull_id"
    )
    return [(hull_id, email, int(a.split(":", 1)[1])) for hull_id, email, a in rows]


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
    in_planhat = {e.get("email"): e for e in stack.planhat.endusers()}
    chosen = [
        (hull_id, email, person_id)
        for hull_id, email, person_id in _delivered_by_email(stack)
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


def _new_colleague(stack: Stack, a_person: int, email: str) -> int:
    """A new Copper person in person ``a_person``'s company, with ``email``: its id."""
    record = stack.copper.record("people", a_person)
    assert record is not None
    colleague = copy.deepcopy(record)
    person = max(p["id"] for p in stack.copper.records("people")) + 1
    colleague.update(id=person, name="Colleague Ofa", title="Colleague of A")
    colleague["emails"] = [{"email": email, "category": "work"}]
    colleague["leads_converted_from"], colleague["date_lead_created"] = [], None
    colleague["date_created"] = colleague["date_modified"] = max(
        stack.copper.clock(), record["date_modified"] + 1
    )
    stack.copper.upsert_records("people", [colleague])
    return person


def _sent_again(stack: Stack, *emails: str) -> list[dict[str, object]]:
    """The enduser items with one of ``emails`` that the next cycle sends."""
    stack.planhat.rest.clear_requests()
    stack.cycle()
    again = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    return [i for i in again if i.get("email") in emails]


def _delivered_person(stack: Stack) -> tuple[str, str, int, dict[str, Any]]:
    """After a first cycle, a person delivered by email: ``(hull_id, email, person id,
    its enduser)``."""
    stack.cycle()
    in_planhat = {e.get("email"): e for e in stack.planhat.endusers()}
    chosen = [row for row in _delivered_by_email(stack) if row[1] in in_planhat]
    assert chosen, "no delivered enduser keyed by its email"
    a_id, a_email, a_person = chosen[0]
    return a_id, a_email, a_person, in_planhat[a_email]


def _person_and_colleague(stack: Stack) -> tuple[str, str, int, str, int]:
    """Person A, delivered by email, and B, a new colleague of A's with the address
    ``colleague.<A's>``, delivered by a sync of its own; then A again (re-titled), so that B's
    key is older than the fingerprint of A's. ``(a_id, a_email, a_person, b_id, b_person)``."""
    a_id, a_email, a_person, _ = _delivered_person(stack)
    b_email = "colleague." + a_email
    b_person = _new_colleague(stack, a_person, b_email)
    stack.cycle()
    [(b_id,)] = stack.query("select hull_id from hull.users where email = ?", [b_email])
    _edit_person(stack, a_id, a_person, a_email, title="Re-titled A")
    stack.cycle()
    return a_id, a_email, a_person, b_id, b_person


def test_an_email_given_up_and_taken_by_a_colleague_in_one_sync_keeps_two_people_apart(
    either_order: Stack,
) -> None:
    """In one Copper sync, A's email changes and B, a colleague with a profile and an enduser
    of its own, takes A's old address. Before, B's person record resolved by that email to
    A's profile, whose sources were giving it up: A's profile took B's title, B's kept its old
    email, and Planhat followed. Now B keeps its profile and takes the address; each enduser
    is updated by its own ``_id``, whatever order Planhat applies a bulk's items in."""
    stack = either_order
    a_id, a_email, a_person, b_id, b_person = _person_and_colleague(stack)
    b_email = "colleague." + a_email
    in_planhat = {e.get("email"): e for e in stack.planhat.endusers()}
    a_before, b_before = in_planhat[a_email], in_planhat[b_email]
    assert (a_before.get("position"), b_before.get("position")) == ("Re-titled A", "Colleague of A")
    a_title = stack.query(
        "select attributes->>'copper_person/title' from hull.users where hull_id = ?", [a_id]
    )

    a_new = "zz." + a_email  # after B's new key: a bulk in key order puts B's item first
    _edit_person(stack, a_id, a_person, a_new)
    _edit_person(stack, b_id, b_person, a_email)
    stack.planhat.rest.clear_requests()
    stack.cycle()

    profiles = stack.query(
        "select hull_id, email, attributes->>'copper_person/title', anonymous_ids"
        " from hull.users where hull_id in (?, ?) order by email",
        [a_id, b_id],
    )
    assert [(h, e, t) for h, e, t, _ in profiles] == [
        (b_id, a_email, "Colleague of A"),
        (a_id, a_new, a_title[0][0]),
    ]
    assert f"copper-person:{b_person}" not in profiles[1][3]
    assert not stack.query(
        "select 1 from ops.sync_log where event = 'incoming.user.skip' and object_id = ?",
        [f"copper-person:{b_person}"],
    )
    by_id = {e["_id"]: e for e in stack.planhat.endusers()}
    assert by_id[a_before["_id"]].get("email") == a_new
    assert by_id[a_before["_id"]].get("position") == a_before.get("position")
    assert by_id[b_before["_id"]].get("email") == a_email
    assert by_id[b_before["_id"]].get("position") == "Colleague of A"
    emails = sorted(e.get("email") for e in by_id.values())
    assert [e for e in emails if e in (a_email, a_new, b_email)] == sorted([a_email, a_new])
    sent = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    assert sorted((i.get("_id"), i.get("email")) for i in sent if i.get("_id")) == sorted(
        [(a_before["_id"], a_new), (b_before["_id"], a_email)]
    )

    # taken: the next cycle sends neither again
    assert not _sent_again(stack, a_email, a_new)


def test_two_colleagues_swapping_addresses_in_one_sync_keep_their_profiles_and_endusers(
    either_order: Stack,
) -> None:
    """In one Copper sync A takes B's address and B takes A's. Before, each record resolved by
    its new email to the other's profile (neither address counted as given up while the
    other still held its own): the profiles traded titles and kept their emails. Now both
    keep their profiles and trade the addresses, and Planhat's two endusers are updated by
    their own ``_id``s, with no enduser added."""
    stack = either_order
    a_id, a_email, a_person, b_id, b_person = _person_and_colleague(stack)
    b_email = "colleague." + a_email
    in_planhat = {e.get("email"): e for e in stack.planhat.endusers()}
    a_before, b_before = in_planhat[a_email], in_planhat[b_email]
    count_before = len(stack.planhat.endusers())

    _edit_person(stack, a_id, a_person, b_email)
    _edit_person(stack, b_id, b_person, a_email)
    stack.cycle()

    profiles = stack.query(
        "select hull_id, email, attributes->>'copper_person/title'"
        " from hull.users where hull_id in (?, ?) order by hull_id = ?",
        [a_id, b_id, b_id],
    )
    assert profiles == [(a_id, b_email, "Re-titled A"), (b_id, a_email, "Colleague of A")]
    assert not stack.query(
        "select 1 from ops.sync_log where event = 'incoming.user.skip' and object_id in (?, ?)",
        [f"copper-person:{a_person}", f"copper-person:{b_person}"],
    )
    endusers = stack.planhat.endusers()
    assert len(endusers) == count_before
    by_id = {e["_id"]: e for e in endusers}
    assert (by_id[a_before["_id"]].get("email"), by_id[a_before["_id"]].get("position")) == (
        b_email,
        "Re-titled A",
    )
    assert (by_id[b_before["_id"]].get("email"), by_id[b_before["_id"]].get("position")) == (
        a_email,
        "Colleague of A",
    )

    # taken: the next cycle sends neither again
    assert not _sent_again(stack, a_email, b_email)


def test_a_new_colleague_taking_a_moved_person_s_address_gets_an_enduser_of_its_own(
    either_order: Stack,
) -> None:
    """In one Copper sync A's email changes and C, a new person never sent to Planhat, takes
    A's old address. A's enduser is renamed by its ``_id``; C's item, keyed by the address,
    goes in a later request: in the same bulk, applied first, it would match A's enduser (which
    still answered to the address), take it over, and leave C without an enduser, recorded as
    delivered."""
    stack = either_order
    a_id, a_email, a_person, a_before = _delivered_person(stack)

    a_new = "zz." + a_email
    _edit_person(stack, a_id, a_person, a_new)
    c_person = _new_colleague(stack, a_person, a_email)
    stack.planhat.rest.clear_requests()
    stack.cycle()

    [(c_id,)] = stack.query(
        "select hull_id from hull.users where list_contains(anonymous_ids, ?)",
        [f"copper-person:{c_person}"],
    )
    assert c_id != a_id
    assert stack.query("select email from hull.users where hull_id = ?", [c_id]) == [(a_email,)]
    requests = [r.body for r in stack.planhat.rest.recorded("PUT", "^/endusers$")]
    sent_in = {
        (item.get("_id"), item.get("email")): n for n, body in enumerate(requests) for item in body
    }
    assert sent_in[(a_before["_id"], a_new)] < sent_in[(None, a_email)]
    by_id = {e["_id"]: e for e in stack.planhat.endusers()}
    assert by_id[a_before["_id"]].get("email") == a_new
    assert by_id[a_before["_id"]].get("position") == a_before.get("position")
    held = [e for e in by_id.values() if e.get("email") == a_email]
    assert [e.get("position") for e in held] == ["Colleague of A"]
    # settled: the next cycle sends neither again
    assert not _sent_again(stack, a_email, a_new)


def test_an_address_taken_back_from_a_colleague_goes_to_the_person_s_own_enduser(
    either_order: Stack,
) -> None:
    """A moves from x to y while B, a colleague with an enduser of its own, takes x; later,
    in one sync, B moves on to w while A takes x back. ``email:x`` was delivered for A long
    ago, then for B: A's item goes by A's enduser ``_id`` (by the address, it would land on
    B's enduser, which Planhat may still hold under it), B's by B's."""
    stack = either_order
    a_id, a_email, a_person, b_id, b_person = _person_and_colleague(stack)
    b_email = "colleague." + a_email
    in_planhat = {e.get("email"): e for e in stack.planhat.endusers()}
    a_enduser, b_enduser = in_planhat[a_email]["_id"], in_planhat[b_email]["_id"]

    a_new = "zz." + a_email
    _edit_person(stack, a_id, a_person, a_new)
    _edit_person(stack, b_id, b_person, a_email)
    stack.cycle()
    by_id = {e["_id"]: e for e in stack.planhat.endusers()}
    assert (by_id[a_enduser].get("email"), by_id[b_enduser].get("email")) == (a_new, a_email)

    b_new = "moved.on." + a_email
    _edit_person(stack, b_id, b_person, b_new)
    _edit_person(stack, a_id, a_person, a_email, title="A again")
    stack.planhat.rest.clear_requests()
    stack.cycle()
    assert sorted(
        stack.query("select hull_id, email from hull.users where hull_id in (?, ?)", [a_id, b_id])
    ) == sorted([(a_id, a_email), (b_id, b_new)])
    sent = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    assert [i.get("_id") for i in sent if i.get("email") == a_email] == [a_enduser]
    assert [i.get("_id") for i in sent if i.get("email") == b_new] == [b_enduser]
    by_id = {e["_id"]: e for e in stack.planhat.endusers()}
    assert (by_id[a_enduser].get("email"), by_id[a_enduser].get("position")) == (
        a_email,
        "A again",
    )
    assert (by_id[b_enduser].get("email"), by_id[b_enduser].get("position")) == (
        b_new,
        "Colleague of A",
    )
    held = sorted(
        e.get("email") for e in by_id.values() if e.get("email") in (a_email, a_new, b_new)
    )
    assert held == sorted([a_email, b_new])


def test_a_new_colleague_taking_the_address_of_a_person_keyed_by_external_id_waits_for_it(
    either_order: Stack,
) -> None:
    """A is keyed by its external id, which does not change, so its item is not addressed by
    ``_id``; its email changes while C, a new colleague without an external id, takes A's old
    one. C's item goes after A's: in the same bulk, applied first, it would match A's enduser
    by that address."""
    stack = either_order
    stack.cycle()
    rows = stack.query(
        "select u.hull_id, u.email, a from hull.users u, unnest(u.anonymous_ids) t(a)"
        " where u.external_id is not null and u.email is not null"
        " and a like 'copper-person:%' and 'external_id:' || u.external_id in"
        " (select key from planhat.delivery_fingerprints where target = 'endusers')"
        " order by u.hull_id"
    )
    in_planhat = {e.get("email"): e for e in stack.planhat.endusers()}
    chosen = [row for row in rows if row[1] in in_planhat]
    assert chosen, "no delivered enduser keyed by its external id"
    a_id, a_email, anonymous = chosen[0]
    a_person = int(anonymous.split(":", 1)[1])
    a_before = in_planhat[a_email]

    _edit_person(stack, a_id, a_person, "zz." + a_email)
    c_person = _new_colleague(stack, a_person, a_email)
    colleague = copy.deepcopy(stack.copper.record("people", c_person))
    colleague["custom_fields"] = []  # not A's external id: C has none
    stack.copper.upsert_records("people", [colleague])
    stack.planhat.rest.clear_requests()
    stack.cycle()

    [(c_id, c_external_id)] = stack.query(
        "select hull_id, external_id from hull.users where list_contains(anonymous_ids, ?)",
        [f"copper-person:{c_person}"],
    )
    assert (c_id != a_id, c_external_id) == (True, None)
    requests = [r.body for r in stack.planhat.rest.recorded("PUT", "^/endusers$")]
    sent_in = {item.get("email"): n for n, body in enumerate(requests) for item in body}
    assert sent_in["zz." + a_email] < sent_in[a_email]
    by_id = {e["_id"]: e for e in stack.planhat.endusers()}
    assert by_id[a_before["_id"]].get("email") == "zz." + a_email
    held = [e for e in by_id.values() if e.get("email") == a_email]
    assert [e.get("position") for e in held] == ["Colleague of A"]


def _assert_untouched(stack: Stack, a_before: dict[str, Any]) -> None:
    """A's enduser still has its address and content (no one took it over)."""
    by_id = {e["_id"]: e for e in stack.planhat.endusers()}
    assert (by_id[a_before["_id"]].get("email"), by_id[a_before["_id"]].get("position")) == (
        a_before.get("email"),
        a_before.get("position"),
    )


def _assert_moved_and_taken(stack: Stack, a_before: dict[str, Any], a_new: str) -> None:
    """A's enduser has its new address; its old one is the new colleague's enduser alone."""
    by_id = {e["_id"]: e for e in stack.planhat.endusers()}
    assert by_id[a_before["_id"]].get("email") == a_new
    held = [e for e in by_id.values() if e.get("email") == a_before.get("email")]
    assert [e.get("position") for e in held] == ["Colleague of A"]


def test_a_new_colleague_is_not_sent_while_the_move_it_waits_for_failed(
    either_order: Stack,
) -> None:
    """The request renaming A's enduser away from x is refused (a 400): C, taking x, is not
    sent after it (it would match A's enduser, which still answers to x). C is an error of
    that run and goes, after A's rename, in the next."""
    stack = either_order
    a_id, a_email, a_person, a_before = _delivered_person(stack)

    _edit_person(stack, a_id, a_person, "zz." + a_email)
    c_person = _new_colleague(stack, a_person, a_email)
    stack.planhat.rest.faults.add(status=400, path="^/endusers$", method="PUT", times=1)
    run_sync(full=True)  # its refused records are errors of the delivery step

    [(c_id,)] = stack.query(
        "select hull_id from hull.users where list_contains(anonymous_ids, ?)",
        [f"copper-person:{c_person}"],
    )
    assert stack.query(
        "select status, error from planhat.deliveries where target = 'endusers' and hull_id = ?",
        [c_id],
    ) == [("error", NOT_SENT_ORDER)]
    _assert_untouched(stack, a_before)
    stack.cycle()
    _assert_moved_and_taken(stack, a_before, "zz." + a_email)


def test_a_new_colleague_is_not_sent_while_the_move_it_waits_for_is_unsettled(
    either_order: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planhat silently skips the item renaming A's enduser away from x while applying the
    rest of its request: A is unconfirmed, and C, taking x, is not sent after it. The next
    delivery, before any new snapshot, holds A back until a snapshot settles it; C must wait
    too (sent alone, it would match A's enduser, which still answers to x). Once a snapshot
    shows A's rename missing, A is sent again, then C."""
    stack = either_order
    a_id, a_email, a_person, a_before = _delivered_person(stack)
    a_new = "zz." + a_email

    _edit_person(stack, a_id, a_person, a_new)
    c_person = _new_colleague(stack, a_person, a_email)
    _new_colleague(stack, a_person, "d." + a_email)  # created in A's request
    stack.prepare()
    applied = PlanhatStore.bulk_upsert
    skipped: list[str] = []

    def skipping_a(
        store: PlanhatStore, model: str, items: list[Any], *, full_keys: bool = False
    ) -> BulkResult:
        if model == "endusers" and not skipped:
            skipped.extend(i["_id"] for i in items if i.get("email") == a_new)
            items = [i for i in items if i.get("email") != a_new]
        return applied(store, model, items, full_keys=full_keys)

    monkeypatch.setattr(PlanhatStore, "bulk_upsert", skipping_a)
    stack.deliver()
    assert skipped == [a_before["_id"]]
    [(c_id,)] = stack.query(
        "select hull_id from hull.users where list_contains(anonymous_ids, ?)",
        [f"copper-person:{c_person}"],
    )

    def last_status(hull_id: str) -> tuple[str, str | None]:
        return stack.query(
            "select status, error from planhat.deliveries where target = 'endusers'"
            " and hull_id = ? order by delivered_at desc limit 1",
            [hull_id],
        )[0]

    assert last_status(a_id)[0] == "unconfirmed"
    assert last_status(c_id) == ("error", NOT_SENT_ORDER)

    stack.planhat.rest.clear_requests()
    stack.deliver()  # no snapshot since: A is held back, and C with it
    sent = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    assert not [i for i in sent if i.get("email") in (a_email, a_new)]
    assert last_status(c_id) == ("error", NOT_SENT_ORDER)
    _assert_untouched(stack, a_before)

    stack.cycle()
    _assert_moved_and_taken(stack, a_before, a_new)


def test_a_new_person_is_not_sent_onto_the_enduser_of_someone_who_left_the_segments(
    either_order: Stack,
) -> None:
    """A changes address and moves to a company outside the company segments in one sync: A
    leaves the contact segments, so its enduser is not renamed and still answers to x. C, a
    new person taking x, would be matched to it and take it over: C is skipped with its
    reason instead, and A's enduser keeps its content."""
    stack = either_order
    a_id, a_email, a_person, a_before = _delivered_person(stack)
    outside = stack.query(
        "select distinct c from hull.accounts a, unnest(a.anonymous_ids) t(c)"
        " where c like 'copper:%' and not list_contains(a.segments, 'Customer accounts')"
        " order by 1 limit 1"
    )
    assert outside, "no company outside the company segments"
    company = int(outside[0][0].split(":", 1)[1])

    c_person = _new_colleague(stack, a_person, a_email)  # in A's company
    _edit_person(stack, a_id, a_person, "zz." + a_email, company_id=company)
    stack.cycle()

    [(c_id, c_in)] = stack.query(
        "select hull_id, list_contains(segments, 'Customers') from hull.users"
        " where list_contains(anonymous_ids, ?)",
        [f"copper-person:{c_person}"],
    )
    a_in = stack.query(
        "select list_contains(segments, 'Customers') from hull.users where hull_id = ?", [a_id]
    )
    assert (a_in, c_in) == ([(False,)], True)
    _assert_untouched(stack, a_before)
    assert stack.query(
        "select reason from ops.sync_log where event = 'outgoing.user.skip' and object_id = ?",
        [c_id],
    ) == [(TAKEN_ENDUSER,)]
    assert not stack.query(
        "select 1 from planhat.deliveries where target = 'endusers' and hull_id = ?", [c_id]
    )
