"""The payload scope selected statement by statement: the same profiles as one query chose,
read on the read-only connection a payload asset holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.settings import Settings, load_settings
from hull_planhat_pipelines.sync.hull.change_groups import STRUCTURAL
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat.companies import (
    DUPLICATE_EXTERNAL_ID,
    INVALID_OWNER,
    OWNER_SKIPS,
)
from hull_planhat_pipelines.warehouse import payload_scope
from hull_planhat_pipelines.warehouse.connection import read_only
from hull_planhat_pipelines_tests.warehouse_support import query as _query

USERS = [
    # hull_id, external_id, email, segments, account
    ("changed", None, "a@x.io", ["Customers"], "acme"),
    ("shares-email", None, "a@x.io", [], "other"),
    ("refused", "ext-r", "r@x.io", ["Customers"], "acme"),
    ("shares-external-id", "ext-r", None, [], "other"),
    ("taken", None, "t@x.io", ["Customers"], "acme"),
    ("unsettled", None, "u@x.io", ["Customers"], "acme"),
    ("never-sent", None, "n@x.io", ["Customers"], "acme"),
    ("waits-for-company", None, "w@x.io", ["Customers"], "unknown"),
    ("of-a-changed-account", None, "c@x.io", [], "moved"),
    ("current", None, "k@x.io", ["Customers"], "acme"),
]


def _settings() -> Settings:
    settings = load_settings()
    planhat = settings.planhat.model_copy(update={"contact_segments": ["Customers"]})
    return settings.model_copy(update={"planhat": planhat})


def _warehouse(path: Path, settings: Settings) -> None:
    conn = duckdb.connect(str(path))
    for schema in ("hull", "ops", "planhat"):
        conn.execute(f"create schema {schema}")
    conn.execute(
        "create table hull.users (hull_id varchar, external_id varchar, email varchar,"
        " segments varchar[], account_hull_id varchar)"
    )
    conn.executemany("insert into hull.users values (?, ?, ?, ?, ?)", USERS)
    conn.execute(
        "create table hull.accounts (hull_id varchar, external_id varchar, segments varchar[])"
    )
    conn.execute(
        "insert into hull.accounts values ('acme', 'acme-ext', []), ('unknown', 'nope', []),"
        " ('moved', 'moved-ext', []), ('other', null, [])"
    )
    conn.execute(
        "create table ops.hull_changes (kind varchar, hull_id varchar, grp varchar, seq bigint)"
    )
    conn.execute(
        "insert into ops.hull_changes values ('user', 'current', ?, 1),"
        " ('user', 'changed', ?, 2), ('account', 'moved', ?, 2)",
        [STRUCTURAL, STRUCTURAL, STRUCTURAL],
    )
    conn.execute(
        "create table planhat.delivery_fingerprints (target varchar, key varchar,"
        " fingerprint varchar, delivered_at timestamptz)"
    )
    conn.execute(
        "insert into planhat.delivery_fingerprints (target, key, fingerprint) values"
        " ('companies', 'acme-ext', 'c'), ('companies', 'moved-ext', 'm'),"
        " ('endusers', 'email:a@x.io', 'a'), ('endusers', 'external_id:ext-r', 'older'),"
        " ('endusers', 'email:t@x.io', 't'), ('endusers', 'email:u@x.io', 'u'),"
        " ('endusers', 'email:k@x.io', 'k'), ('endusers', 'email:c@x.io', 'c')"
    )
    for statement in payload_scope.SCOPE_DDL:
        conn.execute(statement)
    digest = payload_scope._digest(conn, settings, "endusers")
    conn.execute("insert into ops.payload_scope values ('endusers', 1, ?)", [digest])
    conn.execute(
        "insert into ops.payload_pending (target, hull_id, key, fingerprint) values"
        " ('endusers', 'refused', 'external_id:ext-r', 'sent-but-refused'),"
        " ('endusers', 'taken', 'email:t@x.io', 't'),"
        " ('endusers', 'unsettled', 'email:u@x.io', null)"
    )
    conn.close()


def test_the_scope_selected_in_steps_keeps_every_reason_and_the_key_sharers(
    made: tuple[Settings, Path],
) -> None:
    settings, database = made

    with read_only(str(database)) as conn:
        assert conn is not None
        mapped = payload_scope.scope(conn, settings, "endusers", force=False)
        companies = payload_scope.scope(conn, settings, "companies", force=False)
        assert mapped.where is not None and mapped.seq == 2
        selected = {
            r[0]
            for r in conn.execute(f"select hull_id from hull.users where {mapped.where}").fetchall()
        }
        # the other target's scope, selected on the same connection, left this one as it was
        assert companies.target == "companies"
        again = conn.execute(f"select count(*) from hull.users where {mapped.where}").fetchall()

    assert selected == {
        "changed",  # rewritten since the scope last mapped
        "shares-email",  # shares the changed profile's key
        "refused",  # its fingerprint is not the one it was sent with
        "shares-external-id",
        "unsettled",  # pending without a fingerprint: mapped again
        "never-sent",  # in the segment, no fingerprint, its company known
        "of-a-changed-account",  # its companyExternalId comes from a rewritten account
    }
    assert again == [(len(selected),)]

    # what the read-only connection made was its own: nothing was written to the warehouse
    tables = _query(
        database,
        "select table_name from information_schema.tables where table_name like 'payload_s%'",
    )
    assert sorted(tables) == [("payload_scope",), ("payload_skipped",)]  # the DDL's own


def test_whoever_holds_a_key_a_changed_profile_was_delivered_under_is_mapped(
    made: tuple[Settings, Path],
) -> None:
    # "changed" was delivered under k@x.io, the key "current" holds (a duplicate left out of
    # that delivery), before its email became a@x.io: Planhat holds its content under it
    settings, database = made
    assert "current" not in _selected(database, settings)
    _execute(
        database,
        "create table planhat.deliveries (target varchar, key varchar, hull_id varchar)",
        "insert into planhat.deliveries values ('endusers', 'email:a@x.io', 'changed'),"
        " ('endusers', null, 'changed'), ('companies', 'email:k@x.io', 'changed'),"
        " ('endusers', 'email:k@x.io', 'taken')",
    )
    assert "current" not in _selected(database, settings)  # no key of a changed profile's
    _execute(
        database, "insert into planhat.deliveries values ('endusers', 'email:k@x.io', 'changed')"
    )
    assert "current" in _selected(database, settings)

    # a company: "moved" (rewritten) was delivered under acme-ext, which "acme" holds
    conn = duckdb.connect(str(database))
    digest = payload_scope._digest(conn, settings, "companies")
    conn.execute("insert into ops.payload_scope values ('companies', 2, ?)", [digest])
    conn.execute("update ops.hull_changes set seq = 3 where hull_id = 'moved'")
    conn.close()

    def companies() -> set[str]:
        with read_only(str(database)) as conn:
            assert conn is not None
            mapped = payload_scope.scope(conn, settings, "companies", force=False)
            assert mapped.where is not None
            rows = conn.execute(f"select hull_id from hull.accounts where {mapped.where}")
            return {str(r[0]) for r in rows.fetchall()}

    assert companies() == {"moved"}  # rewritten
    _execute(database, "insert into planhat.deliveries values ('companies', 'acme-ext', 'moved')")
    assert companies() == {"moved", "acme"}


# -- the waiting seed, kept between runs ------------------------------------------------------
def _waiting_now(database: Path, settings: Settings) -> payload_scope.Scope:
    with read_only(str(database)) as conn:
        assert conn is not None
        return payload_scope.scope(conn, settings, "endusers", force=False)


def _remember(database: Path, mapped: payload_scope.Scope, sent: list[str]) -> None:
    """What the asset keeps after a run whose payloads were the users ``sent``."""
    payloads = pd.DataFrame(
        {"hull_id": sent, "key": [f"k-{h}" for h in sent], "fingerprint": ["f"] * len(sent)}
    )
    payload_scope.remember_scopes(str(database), [mapped], payloads)


def _selected(database: Path, settings: Settings, *, scan: bool = False) -> set[str]:
    """The users the endusers scope selects; ``scan``: as a run that kept nothing would (a scan
    of every user for the waiting seed), on a copy."""
    if scan:
        copy = database.with_name("scan.duckdb")
        shutil.copy(database, copy)
        _execute(copy, f"delete from {payload_scope.TRACKED}")
        database = copy
    with read_only(str(database)) as conn:
        assert conn is not None
        mapped = payload_scope.scope(conn, settings, "endusers", force=False)
        assert mapped.where is not None
        rows = conn.execute(f"select hull_id from hull.users where {mapped.where}").fetchall()
    return {str(r[0]) for r in rows}


def _execute(database: Path, *statements: str) -> None:
    conn = duckdb.connect(str(database))
    for statement in statements:
        conn.execute(statement)
    conn.close()


def _forced_again(database: Path) -> set[str]:
    """The endusers keys the next run forces again (``forced_not_taken``)."""
    with read_only(str(database)) as conn:
        return payload_scope.forced_not_taken(conn, "endusers")


@pytest.fixture
def made(tmp_path: Path) -> tuple[Settings, Path]:
    """The settings and a warehouse of ``USERS`` (its scope last mapped at sequence 1)."""
    settings = _settings()
    database = tmp_path / "warehouse.duckdb"
    _warehouse(database, settings)
    return settings, database


def test_the_kept_waiting_seed_finds_each_way_in_without_scanning_every_user(
    made: tuple[Settings, Path],
) -> None:
    settings, database = made

    first = _waiting_now(database, settings)  # nothing kept yet: every user is scanned
    assert first.waiting is not None and first.waiting.replace
    assert set(first.waiting.hull_ids) == {"never-sent"}
    _remember(database, first, sent=[])  # mapped but skipped: it stays waiting
    kept = _query(database, f"select hull_id from {payload_scope.WAITING}")
    known = _query(database, f"select external_id from {payload_scope.KNOWN}")
    assert kept == [("never-sent",)]
    assert sorted(known) == [("acme-ext",), ("moved-ext",)]

    _execute(
        database,
        # its company becomes known (being sent now): waits-for-company comes in
        "create table planhat.company_payloads (key varchar)",
        "insert into planhat.company_payloads values ('nope')",
        # a new user, in the segment, of a known company: the change log names it
        "insert into hull.users values ('new', null, 'new@x.io', ['Customers'], 'acme')",
        # a user enters the segment, with a key of its own and a known company
        "update hull.users set segments = ['Customers'], email = 's@x.io',"
        " account_hull_id = 'acme' where hull_id = 'shares-email'",
        # an account takes the external id of a known company: its unchanged user comes in
        "insert into hull.accounts values ('renamed', 'acme-ext', [])",
        "insert into hull.users values ('of-renamed', null, 'o@x.io', ['Customers'], 'renamed')",
        "insert into ops.hull_changes values ('user', 'new', '*', 3),"
        " ('user', 'shares-email', '*', 3), ('account', 'renamed', '*', 3),"
        " ('user', 'of-renamed', '*', 2)",
    )

    second = _waiting_now(database, settings)
    assert second.waiting is not None and not second.waiting.replace
    assert second.waiting.added == ("nope",) and second.waiting.removed == ()
    expected = {"never-sent", "waits-for-company", "new", "shares-email", "of-renamed"}
    assert set(second.waiting.hull_ids) == expected
    assert _selected(database, settings) == _selected(database, settings, scan=True)
    # no user is scanned: one the log does not name (nothing makes such a user) is not tested
    _execute(
        database,
        "insert into hull.users values ('unlogged', null, 'l@x.io', ['Customers'], 'acme')",
    )
    assert "unlogged" not in _waiting_now(database, settings).waiting.hull_ids  # type: ignore[union-attr]
    assert "unlogged" in _selected(database, settings, scan=True)
    _execute(database, "delete from hull.users where hull_id = 'unlogged'")

    # two are delivered, three sent and not taken yet; the company being sent is not any more
    _remember(database, second, sent=["waits-for-company", "shares-email", "of-renamed"])
    _execute(
        database,
        "insert into planhat.delivery_fingerprints (target, key, fingerprint) values ('endusers', 'email:n@x.io', 'n'),"
        " ('endusers', 'email:new@x.io', 'n')",
        "delete from planhat.company_payloads",
    )
    third = _waiting_now(database, settings)
    assert third.waiting is not None
    assert third.waiting.added == () and third.waiting.removed == ("nope",)
    # sent and not taken: still waiting (and pending); their company known, unlike the third
    assert set(third.waiting.hull_ids) == {"shares-email", "of-renamed"}
    selected = _selected(database, settings)
    assert {"waits-for-company", "shares-email", "of-renamed"} <= selected
    assert not {"never-sent", "new"} & selected
    assert selected == _selected(database, settings, scan=True)


def test_a_run_that_maps_every_profile_keeps_its_scan_and_an_unmoved_one_writes_nothing(
    made: tuple[Settings, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, database = made
    first = _waiting_now(database, settings)
    _remember(database, first, sent=[])

    writes: list[str] = []
    begin = payload_scope.transaction

    def spy(conn: duckdb.DuckDBPyConnection) -> object:
        writes.append("write")
        return begin(conn)

    again = _waiting_now(database, settings)
    monkeypatch.setattr(payload_scope, "transaction", spy)
    _remember(database, again, sent=[])
    assert writes == []  # the same seq, pending, waiting users and known companies
    monkeypatch.undo()
    _execute(
        database,
        "insert into planhat.delivery_fingerprints (target, key, fingerprint) values ('endusers', 'email:n@x.io', 'n')",
    )
    assert _selected(database, settings) == set()  # nothing changed and nobody waits

    _execute(  # a user waits again: the forced run's scan finds it
        database, "insert into hull.users values ('new', null, 'new@x.io', ['Customers'], 'acme')"
    )
    with read_only(str(database)) as conn:
        assert conn is not None
        [(version,)] = conn.execute(f"select version from {payload_scope.TRACKED}").fetchall()
        every = payload_scope.scope(conn, settings, "endusers", force=True)
    assert every.where is None and every.waiting is not None and every.waiting.replace
    _remember(database, every, sent=[])
    kept = [
        sorted(_query(database, f"select * exclude (target) from {table}"))
        for table in (payload_scope.WAITING, payload_scope.KNOWN)
    ]
    [(new_version,)] = _query(database, f"select version from {payload_scope.TRACKED}")
    assert kept == [[("new",)], [("acme-ext",), ("moved-ext",)]]
    assert new_version != version
    later = _waiting_now(database, settings)  # starts from the forced run's scan
    assert later.waiting is not None and not later.waiting.replace
    assert set(later.waiting.hull_ids) == {"new"}


def test_two_runs_at_once_forget_the_kept_seed_and_the_next_run_scans_every_user(
    made: tuple[Settings, Path],
) -> None:
    settings, database = made
    _remember(database, _waiting_now(database, settings), sent=[])

    # both read the same kept set; the second remembers after the first: its changes are
    # relative to a set that is gone, and what the first found would be lost
    _execute(
        database,
        "insert into hull.users values ('new', null, 'new@x.io', ['Customers'], 'acme')",
        "insert into ops.hull_changes values ('user', 'new', '*', 3)",
    )
    first = _waiting_now(database, settings)
    second = _waiting_now(database, settings)
    assert first.waiting is not None and "new" in first.waiting.hull_ids
    _remember(database, first, sent=[])
    _remember(database, second, sent=["new"])

    kept = [
        _query(database, f"select count(*) from {table}")[0][0]
        for table in (payload_scope.WAITING, payload_scope.KNOWN, payload_scope.TRACKED)
    ]
    assert kept == [0, 0, 0]
    after = _waiting_now(database, settings)
    assert after.waiting is not None and after.waiting.replace  # a scan of every user
    assert set(after.waiting.hull_ids) == {"never-sent", "new"}

    # a run that read a kept set, then the set forgotten and stored anew: its version is new,
    # so the stale run's changes are not applied to the new set
    _remember(database, after, sent=[])
    stale = _waiting_now(database, settings)
    _execute(database, f"delete from {payload_scope.TRACKED}")  # forgotten (a forced run)
    _remember(database, _waiting_now(database, settings), sent=[])  # scanned and kept anew
    _remember(database, stale, sent=[])
    [(tracked,)] = _query(database, f"select count(*) from {payload_scope.TRACKED}")
    assert tracked == 0


def test_a_forced_payload_no_delivery_took_is_selected_and_forced_again(
    made: tuple[Settings, Path],
) -> None:
    """A forced payload carries the fingerprint Planhat already had (the endusers of a company
    Planhat deleted, following its re-creation). When no delivery takes it (the run killed, or
    its request refused, after the company's), its fingerprint alone would call it taken and
    nothing would send it again: it stays selected, and forced, until a delivery stores its
    fingerprint after the payload was written."""
    settings, database = made
    assert "current" not in _selected(database, settings)  # delivered, unchanged
    mapped = _waiting_now(database, settings)
    forced = pd.DataFrame({"hull_id": ["current"], "key": ["email:k@x.io"], "fingerprint": ["k"]})

    # the operator's forced send is sent once by its delivery: not owed by later runs
    payload_scope.remember_scopes(str(database), [mapped], forced, forced=True)
    assert "current" not in _selected(database, settings)
    assert _forced_again(database) == set()
    # the sync's own (a follow-up) is owed
    payload_scope.remember_scopes(str(database), [mapped], forced)
    assert "current" in _selected(database, settings)
    assert _forced_again(database) == {"email:k@x.io"}
    # a delivery from before the payload was written does not take it
    _execute(
        database,
        "update planhat.delivery_fingerprints set delivered_at = now() - interval 1 hour"
        " where key = 'email:k@x.io'",
    )
    assert "current" in _selected(database, settings)
    assert _forced_again(database) == {"email:k@x.io"}
    # one after it does
    _execute(
        database,
        "update planhat.delivery_fingerprints set delivered_at = now() + interval 1 second"
        " where key = 'email:k@x.io'",
    )
    assert "current" not in _selected(database, settings)
    assert _forced_again(database) == set()


def test_a_follow_up_written_again_is_owed_again_and_a_forced_runs_rows_do_not_linger(
    made: tuple[Settings, Path],
) -> None:
    """The same follow-up twice (Planhat deleted the company again after a delivery took the
    first): the second is owed from its own run, not judged by the first's time. And a run
    with no payloads after a forced one clears the forced run's rows."""
    settings, database = made
    follow = pd.DataFrame({"hull_id": ["current"], "key": ["email:k@x.io"], "fingerprint": ["k"]})

    payload_scope.remember_scopes(str(database), [_waiting_now(database, settings)], follow)
    assert _forced_again(database) == {"email:k@x.io"}
    _execute(
        database,
        "update planhat.delivery_fingerprints set delivered_at = now() where key = 'email:k@x.io'",
    )
    assert _forced_again(database) == set()
    payload_scope.remember_scopes(str(database), [_waiting_now(database, settings)], follow)
    assert _forced_again(database) == {"email:k@x.io"}

    payload_scope.remember_scopes(
        str(database), [_waiting_now(database, settings)], follow, forced=True
    )
    payload_scope.remember_scopes(
        str(database), [_waiting_now(database, settings)], follow.iloc[0:0]
    )
    assert _query(database, f"select count(*) from {payload_scope.PENDING}") == [(0,)]


# -- the skipped companies, kept between runs --------------------------------------------------
def test_the_kept_skips_are_those_of_each_account_s_last_mapping(
    made: tuple[Settings, Path],
) -> None:
    settings, database = made
    _execute(database, "update hull.accounts set segments = ['Customer accounts']")
    assert settings.planhat.company_segments == ["Customer accounts"]
    left_alone: list[int] = []  # each run's skipped_before: the kept skips it did not map

    def mapping(
        mapped_ids: set[str] | None, skipped: set[str], duplicates: frozenset[str] = frozenset()
    ) -> set[str]:
        """A company payload run that mapped ``mapped_ids`` (None: every account) and skipped
        ``skipped`` of them for their owner and ``duplicates`` for sharing an external id;
        returns the skips kept after it."""
        with read_only(str(database)) as conn:
            assert conn is not None
            mapped = payload_scope.scope(conn, settings, "companies", force=mapped_ids is None)
        assert (mapped.where is None) == (mapped_ids is None)
        left_alone.append(mapped.skipped_before)
        profiles = pd.DataFrame({"hull_id": sorted(mapped_ids or [])}, dtype=object)
        events = [
            SyncEvent(
                event="outgoing.account.skip",
                object_type="account",
                object_id=hull_id,
                reason=reason,
            )
            for ids, reason in ((skipped, INVALID_OWNER), (duplicates, DUPLICATE_EXTERNAL_ID))
            for hull_id in sorted(ids)
        ]
        done = payload_scope.with_skips(
            mapped, profiles, events, "outgoing.account.skip", OWNER_SKIPS
        )
        payload_scope.remember_scopes(str(database), [done], pd.DataFrame())
        kept = _query(database, f"select hull_id from {payload_scope.SKIPPED}")
        return {str(r[0]) for r in kept}

    assert mapping(None, {"unknown", "moved"}) == {"unknown", "moved"}  # every account mapped
    assert mapping({"acme"}, {"acme"}) == {"unknown", "moved", "acme"}  # the others stand
    assert mapping({"moved"}, set()) == {"unknown", "acme"}  # mapped again, not skipped
    # a duplicate's skip depends on the accounts sharing its key: tested again every run
    assert mapping({"acme", "moved"}, {"acme"}, frozenset({"moved"})) == {"unknown", "acme"}
    _execute(database, "delete from hull.accounts where hull_id = 'unknown'")
    assert mapping({"acme"}, {"acme"}) == {"acme"}  # gone from the store: forgotten
    assert mapping(None, set()) == set()  # a mapping of every account starts over
    assert left_alone == [0, 2, 3, 2, 1, 0]
