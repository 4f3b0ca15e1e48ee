"""Identity resolution: precedence, batch grouping, stable ids, claims gained, conflicts, shells."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pandas as pd

from hull_planhat_pipelines.sync.hull.batch import batch
from hull_planhat_pipelines.sync.hull.identity import MAX_ROUNDS, resolve
from hull_planhat_pipelines.sync.hull.model import empty_store, normalize_store, stable_id
from hull_planhat_pipelines_tests.hull_support import T0


def users(*rows: dict[str, Any]) -> pd.DataFrame:
    """A ``hull.users`` frame; ``created`` orders profiles (older first)."""
    frame = empty_store("user")
    records = []
    for index, row in enumerate(rows):
        records.append(
            {
                "hull_id": row["hull_id"],
                "email": row.get("email"),
                "external_id": row.get("external_id"),
                "anonymous_ids": row.get("anonymous_ids", []),
                "account_hull_id": None,
                "attributes": "{}",
                "created_at": T0 + dt.timedelta(minutes=row.get("created", index)),
                "updated_at": T0,
            }
        )
    return pd.DataFrame(records, columns=frame.columns) if records else frame


@dataclass
class Resolved:
    hull: dict[str, str]
    is_new: dict[str, bool]
    claims: pd.DataFrame
    conflicts: pd.DataFrame
    merges: pd.DataFrame


def resolve_users(store: pd.DataFrame, *records: dict[str, Any]) -> Resolved:
    """Stage ``records`` (``key`` = anonymous id, plus ``email``/``external_id``/``also``)."""
    with batch() as work:
        work.load_store("user", normalize_store(store, "user"))
        for number, record in enumerate(records):
            work.sql(
                "insert into in_records values ('user', ?, 'test', ?, ?, false)",
                [record["key"], str(number), T0 + dt.timedelta(seconds=number)],
            )
            claims = [(c, record.get(c)) for c in ("email", "external_id")]
            claims += [("anonymous_id", extra) for extra in record.get("also", [])]
            for claim, value in claims:
                work.sql(
                    "insert into in_claims values ('user', ?, ?, ?)", [record["key"], claim, value]
                )
        resolve(work, "user")
        res = work.frame("select record_key, hull_id, is_new from res_user")
        return Resolved(
            hull=dict(zip(res["record_key"], res["hull_id"], strict=True)),
            is_new=dict(zip(res["record_key"], res["is_new"], strict=True)),
            claims=work.frame("select * from claims_user order by hull_id, claim, value"),
            conflicts=work.frame("select * from conflicts_user order by record, claim"),
            merges=work.frame("select * from merges_user"),
        )


STORE = users(
    {"hull_id": "A", "external_id": "X1", "email": "a@x.com", "anonymous_ids": ["copper-person:1"]},
    {"hull_id": "B", "email": "b@x.com", "anonymous_ids": ["copper-person:2"]},
    {"hull_id": "C", "email": "c@x.com", "anonymous_ids": ["copper-person:3"]},
)


def test_external_id_wins_over_email_and_anonymous_id() -> None:
    out = resolve_users(STORE, {"key": "copper-person:3", "external_id": "X1", "email": "b@x.com"})
    assert out.hull == {"copper-person:3": "A"}
    assert out.is_new == {"copper-person:3": False}
    conflicts = out.conflicts.set_index("claim")
    assert conflicts.loc["email", "other_hull_id"] == "B"
    assert conflicts.loc["anonymous_id", "other_hull_id"] == "C"
    assert set(conflicts["reason"]) == {"Claim identifies another profile"}
    # claims pointing at other profiles are not added to A
    assert out.claims.empty


def test_email_wins_over_anonymous_id() -> None:
    out = resolve_users(STORE, {"key": "copper-person:3", "email": "b@x.com"})
    assert out.hull == {"copper-person:3": "B"}


def test_anonymous_id_alone_resolves() -> None:
    out = resolve_users(STORE, {"key": "copper-person:3"})
    assert out.hull == {"copper-person:3": "C"}
    assert out.conflicts.empty and out.claims.empty


def test_unknown_claims_make_a_new_profile_with_a_stable_id() -> None:
    first = resolve_users(STORE, {"key": "copper-lead:9", "email": "new@x.com"})
    again = resolve_users(STORE, {"key": "copper-lead:9", "email": "new@x.com"})
    assert first.hull == again.hull == {"copper-lead:9": stable_id("user", "copper-lead:9")}
    assert first.is_new == {"copper-lead:9": True}
    assert set(zip(first.claims["claim"], first.claims["value"], strict=True)) == {
        ("anonymous_id", "copper-lead:9"),
        ("email", "new@x.com"),
    }


def test_records_sharing_claims_transitively_become_one_new_profile() -> None:
    out = resolve_users(
        empty_store("user"),
        {"key": "copper-lead:1", "email": "ann@x.com"},
        {"key": "copper-person:5", "email": "ann@x.com", "external_id": "U-1"},
        {"key": "planhat:p1", "external_id": "U-1"},
        {"key": "copper-lead:2", "email": "other@x.com"},
    )
    one = stable_id("user", "copper-lead:1")
    assert out.hull == {
        "copper-lead:1": one,
        "copper-person:5": one,
        "planhat:p1": one,
        "copper-lead:2": stable_id("user", "copper-lead:2"),
    }
    anonymous = out.claims[(out.claims["hull_id"] == one) & (out.claims["claim"] == "anonymous_id")]
    assert sorted(anonymous["value"]) == ["copper-lead:1", "copper-person:5", "planhat:p1"]


def test_null_and_blank_claims_are_skipped() -> None:
    out = resolve_users(
        empty_store("user"),
        {"key": "copper-lead:1", "email": None},
        {"key": "copper-lead:2", "email": None},
        {"key": "copper-lead:3", "email": ""},
    )
    assert len(set(out.hull.values())) == 3
    assert set(out.claims["claim"]) == {"anonymous_id"}


def test_profile_gains_missing_claims_and_keeps_its_own() -> None:
    # the lead on the profile, not in this batch, may still hold the old email
    store = users(
        {
            "hull_id": "S",
            "anonymous_ids": ["copper-person:7", "copper-lead:3"],
            "email": "old@x.com",
        }
    )
    out = resolve_users(
        store, {"key": "copper-person:7", "email": "new@x.com", "external_id": "U-7"}
    )
    assert out.hull == {"copper-person:7": "S"}
    assert list(zip(out.claims["claim"], out.claims["value"], strict=True)) == [
        ("external_id", "U-7")
    ]
    assert out.conflicts[["claim", "value", "reason"]].values.tolist() == [
        ["email", "new@x.com", "Profile keeps another email"]
    ]


def test_a_batch_gives_a_single_valued_claim_one_value() -> None:
    out = resolve_users(
        empty_store("user"),
        {"key": "copper-person:1", "email": "a@x.com", "also": ["copper-lead:1"]},
        {"key": "copper-lead:1", "email": "b@x.com"},
    )
    assert len(set(out.hull.values())) == 1
    emails = out.claims.loc[out.claims["claim"] == "email", "value"].tolist()
    assert len(emails) == 1
    assert len(out.conflicts) == 1


def test_a_shell_is_merged_into_the_profile_its_record_resolves_to() -> None:
    store = users(
        {"hull_id": "U", "email": "ann@x.com", "anonymous_ids": ["copper-lead:1"]},
        {"hull_id": "SHELL", "anonymous_ids": ["copper-person:9"]},
    )
    out = resolve_users(
        store,
        {"key": "copper-person:9", "email": "ann@x.com"},
        {"key": "copper-activity-parent", "also": ["copper-person:9"]},
    )
    assert set(out.hull.values()) == {"U"}
    assert out.merges.values.tolist() == [["SHELL", "U"]]
    assert out.conflicts.empty
    added = out.claims.loc[out.claims["claim"] == "anonymous_id", "value"].tolist()
    assert "copper-person:9" in added


def test_a_strong_profile_is_never_merged() -> None:
    store = users(
        {"hull_id": "U", "email": "ann@x.com"},
        {"hull_id": "V", "email": "v@x.com", "anonymous_ids": ["copper-person:9"]},
    )
    out = resolve_users(store, {"key": "copper-person:9", "email": "ann@x.com"})
    assert out.hull == {"copper-person:9": "U"}
    assert out.merges.empty
    assert out.conflicts["other_hull_id"].tolist() == ["V"]


def test_sql_and_python_stable_ids_agree() -> None:
    with batch() as work:
        keys = ["copper-lead:1", "planhat:5f1c", "copper:7", "ü-ñ:'quoted'"]
        for key in keys:
            for kind in ("user", "account"):
                sql = work.scalar(f"select hull_stable_id('{kind}', $${key}$$)")
                assert sql == stable_id(kind, key)


def test_a_source_alone_on_its_profile_changes_its_email() -> None:
    store = users({"hull_id": "S", "anonymous_ids": ["copper-person:7"], "email": "old@x.com"})
    out = resolve_users(store, {"key": "copper-person:7", "email": "new@x.com"})
    assert out.hull == {"copper-person:7": "S"}
    assert out.claims[["claim", "value"]].values.tolist() == [["email", "new@x.com"]]
    assert out.conflicts.empty


def test_another_source_in_the_batch_still_holding_the_old_email_keeps_it() -> None:
    store = users(
        {"hull_id": "S", "anonymous_ids": ["copper-person:7", "copper-lead:3"], "email": "o@x.io"}
    )
    moved = resolve_users(
        store,
        {"key": "copper-person:7", "email": "new@x.io"},
        {"key": "copper-lead:3", "email": None},
    )
    assert moved.claims[["claim", "value"]].values.tolist() == [["email", "new@x.io"]]
    held = resolve_users(
        store,
        {"key": "copper-person:7", "email": "new@x.io"},
        {"key": "copper-lead:3", "email": "o@x.io"},
    )
    assert held.claims.empty
    assert held.conflicts[["claim", "value", "reason"]].values.tolist() == [
        ["email", "new@x.io", "Profile keeps another email"]
    ]


def test_planhat_mirroring_a_person_does_not_hold_its_old_email_against_it() -> None:
    store = users(
        {"hull_id": "S", "anonymous_ids": ["copper-person:7", "planhat:e1"], "email": "o@x.io"}
    )
    out = resolve_users(store, {"key": "copper-person:7", "email": "new@x.io"})
    assert out.claims[["claim", "value"]].values.tolist() == [["email", "new@x.io"]]
    # the other way round, the CRM record on the profile may still hold it
    planhat = resolve_users(store, {"key": "planhat:e1", "email": "new@x.io"})
    assert planhat.claims.empty
    assert planhat.conflicts["reason"].tolist() == ["Profile keeps another email"]


def _a_moves_and_b_takes(store: pd.DataFrame, *more: dict[str, Any]) -> Resolved:
    """Person 1 moves from x@c.io to y@c.io while person 2 takes x@c.io, in one batch."""
    return resolve_users(
        store,
        {"key": "copper-person:1", "email": "y@c.io"},
        {"key": "copper-person:2", "email": "x@c.io"},
        *more,
    )


def test_an_email_given_up_in_the_batch_goes_to_the_record_taking_it() -> None:
    """A's person moves to a new address while B's person takes A's old one, in one batch:
    B resolves to its own profile and takes the address; A's takes its new one."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1", "planhat:e1"], "email": "x@c.io"},
        {"hull_id": "B", "anonymous_ids": ["copper-person:2"], "email": "z@c.io"},
    )
    out = _a_moves_and_b_takes(store)
    assert out.hull == {"copper-person:1": "A", "copper-person:2": "B"}
    assert sorted(out.claims[["hull_id", "claim", "value"]].values.tolist()) == [
        ["A", "email", "y@c.io"],
        ["B", "email", "x@c.io"],
    ]
    assert out.conflicts.empty
    assert out.merges.empty
    # a new record taking it is a new profile, not a part of A's
    new = resolve_users(
        store,
        {"key": "copper-person:1", "email": "y@c.io"},
        {"key": "copper-person:3", "email": "x@c.io"},
    )
    assert new.hull["copper-person:3"] == stable_id("user", "copper-person:3")
    assert new.is_new["copper-person:3"]


def test_an_email_not_given_up_still_resolves_the_record_taking_it() -> None:
    """The old address is still A's while another source of A's may hold it: a source not
    in the batch, or one in it still claiming it. B's record resolves to A, as before."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1", "copper-lead:4"], "email": "x@c.io"},
        {"hull_id": "B", "anonymous_ids": ["copper-person:2"], "email": "z@c.io"},
    )
    for lead in ([], [{"key": "copper-lead:4", "email": "x@c.io"}]):
        # a source not in the batch, or in it still claiming the address
        out = _a_moves_and_b_takes(store, *lead)
        assert out.hull["copper-person:2"] == "A"
        assert out.conflicts[["record", "value", "reason"]].values.tolist() == [
            ["copper-person:1", "y@c.io", "Profile keeps another email"],
            ["copper-person:2", "copper-person:2", "Claim identifies another profile"],
        ]


def test_an_email_moved_to_another_profile_s_address_is_not_given_up() -> None:
    """A's person takes C's address: its record resolves to C by that email, so A's profile
    keeps its own, and B's record taking it still resolves to A."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1"], "email": "x@c.io"},
        {"hull_id": "B", "anonymous_ids": ["copper-person:2"], "email": "z@c.io"},
        {"hull_id": "C", "anonymous_ids": ["copper-person:3"], "email": "y@c.io"},
    )
    out = _a_moves_and_b_takes(store)
    assert out.hull == {"copper-person:1": "C", "copper-person:2": "A"}


def _emails_after(store: pd.DataFrame, out: Resolved) -> dict[str, str | None]:
    """Each profile's email once the batch's claims are applied (new profiles included)."""
    emails = dict(zip(store["hull_id"], store["email"], strict=True))
    for hull_id, claim, value in out.claims[["hull_id", "claim", "value"]].values.tolist():
        if claim == "email":
            emails[hull_id] = value
    return emails


def test_an_email_is_not_given_up_when_a_source_of_its_profile_leaves_for_another() -> None:
    """A's lead is in the batch with C's address: it resolves to C, so it vouches for nothing
    on A (rule 6 counts only the records that resolved to the profile). A keeps x@c.io, and
    B's record taking it resolves to A, as before: never two profiles with one email."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1", "copper-lead:4"], "email": "x@c.io"},
        {"hull_id": "B", "anonymous_ids": ["copper-person:2"], "email": "z@c.io"},
        {"hull_id": "C", "anonymous_ids": ["copper-person:3"], "email": "w@c.io"},
    )
    out = _a_moves_and_b_takes(store, {"key": "copper-lead:4", "email": "w@c.io"})
    emails = _emails_after(store, out)
    assert [h for h, e in emails.items() if e == "x@c.io"] == ["A"]
    assert out.hull == {"copper-person:1": "A", "copper-lead:4": "C", "copper-person:2": "A"}


def test_a_profile_s_planhat_record_showing_the_email_it_gave_up_pulls_no_one_in() -> None:
    """A's Planhat enduser, in the batch and not yet sent A's new address, still shows the old
    one when a new person takes it: the new person is a profile of its own (as without the
    Planhat record), not a part of A's; A takes its new address."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1", "planhat:e1"], "email": "x@c.io"},
    )
    out = resolve_users(
        store,
        {"key": "copper-person:1", "email": "y@c.io"},
        {"key": "planhat:e1", "email": "x@c.io"},
        {"key": "copper-person:3", "email": "x@c.io"},
    )
    new = stable_id("user", "copper-person:3")
    assert out.hull == {"copper-person:1": "A", "planhat:e1": "A", "copper-person:3": new}
    emails = _emails_after(store, out)
    assert (emails["A"], emails[new]) == ("y@c.io", "x@c.io")


def test_a_chain_of_moves_in_one_batch_keeps_each_person_on_its_profile() -> None:
    """A moves to a free address, B takes A's old one, C takes B's old one, in one batch: B's
    address is given up once A's is (releases repeat), so nobody lands on another's profile."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1"], "email": "x@c.io"},
        {"hull_id": "B", "anonymous_ids": ["copper-person:2"], "email": "z@c.io"},
        {"hull_id": "C", "anonymous_ids": ["copper-person:3"], "email": "w@c.io"},
    )
    out = _a_moves_and_b_takes(store, {"key": "copper-person:3", "email": "z@c.io"})
    assert out.hull == {"copper-person:1": "A", "copper-person:2": "B", "copper-person:3": "C"}
    assert _emails_after(store, out) == {"A": "y@c.io", "B": "x@c.io", "C": "z@c.io"}
    assert out.conflicts.empty


def test_two_people_swapping_emails_in_one_batch_keep_their_profiles() -> None:
    """A takes B's address and B takes A's, in one batch: each move is possible only once the
    other's is (a cycle), so both are given up together and nobody lands on the other's
    profile; three people rotating their addresses likewise."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1"], "email": "x@c.io"},
        {"hull_id": "B", "anonymous_ids": ["copper-person:2"], "email": "z@c.io"},
        {"hull_id": "C", "anonymous_ids": ["copper-person:3"], "email": "w@c.io"},
    )
    swap = resolve_users(
        store,
        {"key": "copper-person:1", "email": "z@c.io"},
        {"key": "copper-person:2", "email": "x@c.io"},
    )
    assert swap.hull == {"copper-person:1": "A", "copper-person:2": "B"}
    assert _emails_after(store, swap) == {"A": "z@c.io", "B": "x@c.io", "C": "w@c.io"}
    assert swap.conflicts.empty
    assert swap.merges.empty
    rotation = resolve_users(
        store,
        {"key": "copper-person:1", "email": "z@c.io"},
        {"key": "copper-person:2", "email": "w@c.io"},
        {"key": "copper-person:3", "email": "x@c.io"},
    )
    assert rotation.hull == {
        "copper-person:1": "A",
        "copper-person:2": "B",
        "copper-person:3": "C",
    }
    assert _emails_after(store, rotation) == {"A": "z@c.io", "B": "w@c.io", "C": "x@c.io"}
    assert rotation.conflicts.empty


def test_a_swap_one_side_of_which_is_held_releases_neither_email() -> None:
    """A takes B's address and B takes A's, but B's lead, in the batch, still claims B's: B
    keeps it, so A's move is not possible either and A keeps its own: never two profiles
    with one email (the records resolve by email, as before, with conflicts reported)."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1"], "email": "x@c.io"},
        {"hull_id": "B", "anonymous_ids": ["copper-person:2", "copper-lead:4"], "email": "z@c.io"},
    )
    out = resolve_users(
        store,
        {"key": "copper-person:1", "email": "z@c.io"},
        {"key": "copper-person:2", "email": "x@c.io"},
        {"key": "copper-lead:4", "email": "z@c.io"},
    )
    assert _emails_after(store, out) == {"A": "x@c.io", "B": "z@c.io"}
    assert not out.conflicts.empty


def _holders(emails: dict[str, str | None]) -> dict[str, list[str]]:
    """Per email, the profiles ending the batch with it."""
    out: dict[str, list[str]] = {}
    for hull_id, email in emails.items():
        if email is not None:
            out.setdefault(email, []).append(hull_id)
    return out


def test_two_people_moving_to_one_new_address_do_not_both_take_it() -> None:
    """A and C, in one batch, both move to y: the latest record's profile takes it, the other
    keeps its own address (a conflict), each record stays on its own profile."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1"], "email": "x@c.io"},
        {"hull_id": "C", "anonymous_ids": ["copper-person:3"], "email": "w@c.io"},
    )
    out = resolve_users(
        store,
        {"key": "copper-person:1", "email": "y@c.io"},
        {"key": "copper-person:3", "email": "y@c.io"},
    )
    assert out.hull == {"copper-person:1": "A", "copper-person:3": "C"}
    assert _emails_after(store, out) == {"A": "x@c.io", "C": "y@c.io"}
    assert out.conflicts[["record", "value", "reason"]].values.tolist() == [
        ["copper-person:1", "y@c.io", "Another profile holds the email"]
    ]


def test_a_swap_a_third_person_joins_leaves_one_profile_per_email() -> None:
    """A takes B's address, B takes A's, and C takes B's too, in one batch: z cannot go to
    both A and C. Every withheld move hands back a value another move took, so the moves
    unwind: each profile ends with one email of its own, no two with the same."""
    store = users(
        {"hull_id": "A", "anonymous_ids": ["copper-person:1"], "email": "x@c.io"},
        {"hull_id": "B", "anonymous_ids": ["copper-person:2"], "email": "z@c.io"},
        {"hull_id": "C", "anonymous_ids": ["copper-person:3"], "email": "w@c.io"},
    )
    out = resolve_users(
        store,
        {"key": "copper-person:1", "email": "z@c.io"},
        {"key": "copper-person:2", "email": "x@c.io"},
        {"key": "copper-person:3", "email": "z@c.io"},
    )
    assert out.hull == {"copper-person:1": "A", "copper-person:2": "B", "copper-person:3": "C"}
    assert all(len(h) == 1 for h in _holders(_emails_after(store, out)).values())


def test_an_email_its_profile_keeps_after_all_is_not_taken() -> None:
    """A's person gives x up, but A's latest record is a Planhat enduser showing q, which a
    Planhat record not in the batch blocks: A keeps x. B's person, taking x, does not get it
    too (never two profiles with one email)."""
    store = users(
        {
            "hull_id": "A",
            "anonymous_ids": ["copper-person:1", "planhat:e1", "planhat:e2"],
            "email": "x@c.io",
        },
        {"hull_id": "B", "anonymous_ids": ["copper-person:2"], "email": "z@c.io"},
    )
    out = resolve_users(
        store,
        {"key": "copper-person:1", "email": "y@c.io"},
        {"key": "copper-person:2", "email": "x@c.io"},
        {"key": "planhat:e1", "email": "q@c.io"},
    )
    assert _holders(_emails_after(store, out))["x@c.io"] == ["A"]


def test_a_profile_losing_its_latest_email_takes_another_its_records_claim() -> None:
    """B has no email; its lead claims v and its person, later, w, which C's person claims
    later still: C takes w, and B takes v instead of ending with none."""
    store = users(
        {
            "hull_id": "B",
            "external_id": "U-B",
            "anonymous_ids": ["copper-lead:2", "copper-person:2"],
        },
        {"hull_id": "C", "external_id": "U-C", "anonymous_ids": ["copper-person:3"]},
    )
    out = resolve_users(
        store,
        {"key": "copper-lead:2", "email": "v@c.io"},
        {"key": "copper-person:2", "email": "w@c.io"},
        {"key": "copper-person:3", "email": "w@c.io"},
    )
    assert out.hull == {"copper-lead:2": "B", "copper-person:2": "B", "copper-person:3": "C"}
    assert _emails_after(store, out) == {"B": "v@c.io", "C": "w@c.io"}
    assert out.conflicts[["record", "value", "reason"]].values.tolist() == [
        ["copper-person:2", "w@c.io", "Another profile holds the email"]
    ]


def test_a_long_chain_of_moves_blocked_at_its_end_settles() -> None:
    """Person i takes person i+1's address, for 201 people, and the last keeps its own: no
    move is possible. Judging that takes a round per link, more than ``MAX_ROUNDS``: nothing
    is given up then (the sync goes on), and still no two profiles share an email."""
    n = MAX_ROUNDS + 2
    store = users(
        *(
            {"hull_id": f"H{i}", "anonymous_ids": [f"copper-person:{i}"], "email": f"e{i}@c.io"}
            for i in range(1, n + 1)
        )
    )
    records = [{"key": f"copper-person:{i}", "email": f"e{i + 1}@c.io"} for i in range(1, n)]
    out = resolve_users(store, *records, {"key": f"copper-person:{n}", "email": f"e{n}@c.io"})
    assert all(len(h) == 1 for h in _holders(_emails_after(store, out)).values())
    assert len(_holders(_emails_after(store, out))) == n


def _convert_lead_5_into_person_9(store: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Resolve person 9 claiming lead 5 (a conversion): the merges and the conflicts."""
    with batch() as work:
        work.load_store("user", normalize_store(store, "user"))
        work.sql(
            "insert into in_claims values ('user', 'copper-person:9', 'anonymous_id',"
            " 'copper-lead:5');"
            "insert into in_merges values ('user', 'copper-lead:5', 'copper-person:9')"
        )
        work.sql(
            "insert into in_records values ('user', 'copper-person:9', 'person', '9', ?, false)",
            [T0],
        )
        resolve(work, "user")
        merges = work.frame("select from_hull_id, into_hull_id from merges_user")
        conflicts = work.frame("select claim, value, reason from conflicts_user")
    return merges, conflicts


def test_a_conversion_never_merges_away_another_person() -> None:
    store = users(
        {"hull_id": "Q", "anonymous_ids": ["copper-lead:5", "copper-person:8"], "email": "q@x.io"},
        {"hull_id": "P", "anonymous_ids": ["copper-person:9"], "email": "p@x.io"},
    )
    merges, conflicts = _convert_lead_5_into_person_9(store)
    assert merges.empty  # person 8 stays its own user
    assert conflicts.values.tolist() == [
        ["anonymous_id", "copper-lead:5", "Claim identifies another profile"]
    ]


def test_a_converted_lead_merges_into_its_person() -> None:
    store = users(
        {"hull_id": "L", "anonymous_ids": ["copper-lead:5"], "email": "lead@x.io"},
        {"hull_id": "P", "anonymous_ids": ["copper-person:9"], "email": "p@x.io"},
    )
    merges, conflicts = _convert_lead_5_into_person_9(store)
    assert merges.values.tolist() == [["L", "P"]]
    assert conflicts.empty
