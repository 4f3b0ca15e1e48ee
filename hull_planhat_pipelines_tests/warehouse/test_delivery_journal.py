"""Grouped delivery journal of one-record destinations: a transaction per group of records, an
intent durable before its request, and a crash mid-group that neither duplicates nor loses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.clients import delivery
from hull_planhat_pipelines.clients.delivery import configured_target, deliver
from hull_planhat_pipelines.clients.http import SlidingWindowLimiter
from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.planhat.destinations import destination_records
from hull_planhat_pipelines.warehouse import deliveries, read_only
from hull_planhat_pipelines.warehouse.deliveries import DeliveryJournal, journal

NOTES = 120
EVERY = 50
DESTINATION = DestinationSettings(
    name="conversations",
    method="POST",
    path="/conversations",
    source_sql="select * from notes",
    journal_every=EVERY,
)
TARGET = configured_target(DESTINATION.name, DESTINATION.method, DESTINATION.path)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no flush, no rollback)."""


class FakePlanhat:
    """Conversations by ``_id``; creates, reads back by ``extid-``, updates; can be killed
    right after the n-th create landed (its answer never read)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.held: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.kill_after_creates: int | None = None
        self.doubt_seen: list[bool] = []

    def attempts(self) -> int:
        return len(self.calls)

    def redact(self, text: str) -> str:
        return text

    def read(self, path: str) -> dict[str, Any] | None:
        self.calls.append(("GET", path))
        ext = path.rsplit("/extid-", 1)[1]
        return next(({"_id": i} for i, c in self.held.items() if c["externalId"] == ext), None)

    def send(self, method: str, path: str, body: Any, headers: Any = None, *, kind: Any = None):
        self.calls.append((method, path))
        if method == "POST":
            # the intent of this create is durable before it goes out
            with duckdb.connect(self.database, read_only=True) as conn:
                self.doubt_seen.append(
                    str(body["event_id"]) in deliveries.in_doubt_keys(conn, "conversations")
                )
            planhat_id = f"{len(self.held):024x}"
            self.held[planhat_id] = body
            if len([c for c in self.calls if c[0] == "POST"]) == self.kill_after_creates:
                raise Killed
            return SimpleNamespace(status=201, body={"_id": planhat_id}, attempts=1)
        planhat_id = path.rsplit("/", 1)[1]
        self.held[planhat_id] = body
        return SimpleNamespace(status=200, body={"_id": planhat_id}, attempts=1)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "warehouse.duckdb")


def _records(database: str) -> pd.DataFrame:
    source = pd.DataFrame(
        {
            "event_id": [f"n{i:03d}" for i in range(NOTES)],
            "subject": [f"note {i}" for i in range(NOTES)],
        }
    )
    with read_only(database) as conn:
        fingerprints = deliveries.fingerprints_table(conn)
        in_doubt = deliveries.in_doubt_keys(conn, "conversations")
        ids = deliveries.planhat_ids(conn, "conversations")
    records, _ = destination_records(
        source, DESTINATION, fingerprints, planhat_ids=ids, in_doubt=in_doubt
    )
    return records.reset_index(drop=True)


def _deliver(planhat: FakePlanhat, records: pd.DataFrame, kept: DeliveryJournal) -> Any:
    return deliver(
        records,
        TARGET,
        planhat,  # type: ignore[arg-type]
        batch_size=1,
        key_column="key",
        checkpoint=kept.checkpoint,
        intent=kept.intent,
    )


def _latest(database: str) -> dict[str, str]:
    with duckdb.connect(database, read_only=True) as conn:
        return deliveries.latest_statuses(conn, "conversations")


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Each journal commit as it happens: its delivery rows, and whether it checkpointed."""
    seen: list[tuple[int, bool]] = []
    real = deliveries.commit_checkpoint

    def spied(database: str, rows: pd.DataFrame, fresh: pd.DataFrame, **kw: Any) -> None:
        seen.append((len(rows), kw.get("checkpoint", True)))
        real(database, rows, fresh, **kw)

    monkeypatch.setattr(deliveries, "commit_checkpoint", spied)
    return seen


def test_a_group_of_records_costs_one_transaction_and_each_intent_precedes_its_create(
    database: str, commits: list[tuple[int, bool]]
) -> None:
    planhat = FakePlanhat(database)
    records = _records(database)
    with journal(database, "conversations", records, "run-1", every=EVERY) as kept:
        result = _deliver(planhat, records, kept)
    assert result.counts() == {"created": NOTES}
    # 120 creates: the first group's intents, then each group's outcomes with the next
    # group's intents, then the last outcomes (two transactions a record took 240)
    assert [rows for rows, _ in commits] == [50, 100, 70, 20]
    assert kept.transactions == len(commits) == 4
    assert planhat.doubt_seen == [True] * NOTES
    assert set(_latest(database).values()) == {"created"}
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("select count(*) from planhat.delivery_fingerprints").fetchone() == (
            NOTES,
        )
    assert len(planhat.held) == NOTES


def test_a_journal_checkpoints_every_few_commits_and_leaves_no_log_behind(
    database: str, commits: list[tuple[int, bool]]
) -> None:
    planhat = FakePlanhat(database)
    logged: list[bool] = []
    send = planhat.send

    def watched(*args: Any, **kwargs: Any) -> Any:
        logged.append(Path(f"{database}.wal").exists())
        return send(*args, **kwargs)

    planhat.send = watched  # type: ignore[method-assign]
    records = _records(database)
    with journal(database, "conversations", records, "run-1", every=4) as kept:
        result = _deliver(planhat, records, kept)
    assert result.counts() == {"created": NOTES}
    # 31 commits: one in CHECKPOINT_EVERY checkpoints the file, and the last one does
    checkpoints = [checkpointed for _, checkpointed in commits]
    every = deliveries.CHECKPOINT_EVERY
    assert len(checkpoints) == kept.transactions == NOTES // 4 + 1
    assert checkpoints[-1] is True
    assert all(any(checkpoints[i : i + every]) for i in range(len(checkpoints)))
    assert checkpoints.count(False) >= len(checkpoints) // 2
    # requests went out with commits waiting in the log, each intent durable all the same
    assert any(logged) and planhat.doubt_seen == [True] * NOTES
    assert not Path(f"{database}.wal").exists()
    assert set(_latest(database).values()) == {"created"}


def test_one_record_per_group_keeps_every_intent_before_its_create(database: str) -> None:
    planhat = FakePlanhat(database)
    records = _records(database).head(5)
    with journal(database, "conversations", records, "run-1", every=1) as kept:
        _deliver(planhat, records, kept)
    assert kept.transactions == 6 and planhat.doubt_seen == [True] * 5


def test_killed_mid_group_the_rerun_reads_back_the_group_and_duplicates_nothing(
    database: str,
) -> None:
    planhat = FakePlanhat(database)
    planhat.kill_after_creates = 58  # eight creates of the second group landed
    records = _records(database)
    kept = DeliveryJournal(database, "conversations", records, "run-1", every=EVERY)
    with pytest.raises(Killed):
        _deliver(planhat, records, kept)  # killed: the journal is never flushed
    statuses = _latest(database)
    assert sorted(k for k, s in statuses.items() if s == "created") == [
        f"n{i:03d}" for i in range(50)
    ]
    in_doubt = sorted(k for k, s in statuses.items() if s == "pending")
    assert in_doubt == [f"n{i:03d}" for i in range(50, 100)]
    assert len(planhat.held) == 58

    planhat.calls.clear()
    planhat.kill_after_creates = None
    rerun = _records(database)
    assert sorted(rerun["key"]) == [f"n{i:03d}" for i in range(50, NOTES)]
    with journal(database, "conversations", rerun, "run-2", every=EVERY) as kept:
        result = _deliver(planhat, rerun, kept)
    assert result.counts() == {"created": 62, "updated": 8}
    # the group in doubt is read back; what landed is updated, the rest created, once each
    assert sorted(p for m, p in planhat.calls if m == "GET") == [
        f"/conversations/extid-conversations-n{i:03d}" for i in range(50, 100)
    ]
    assert len([1 for m, _ in planhat.calls if m == "PUT"]) == 8
    assert len([1 for m, _ in planhat.calls if m == "POST"]) == NOTES - 58
    assert len(planhat.held) == NOTES
    held = sorted(c["externalId"] for c in planhat.held.values())
    assert held == sorted(f"conversations-n{i:03d}" for i in range(NOTES))
    assert set(_latest(database).values()) == {"created", "updated"}
    assert _records(database).empty  # nothing left to send


def test_updates_need_no_intents_and_commit_a_group_at_a_time(database: str) -> None:
    records = _records(database).head(7)
    kept = DeliveryJournal(database, "conversations", records, "run-1", every=3, intents=False)
    for position in range(7):
        outcomes = deliveries.status_rows("conversations", records.iloc[[position]], "updated")
        kept.checkpoint(outcomes)
    assert kept.transactions == 2  # records 0-2 and 3-5; the seventh is held ...
    kept.flush()
    assert kept.transactions == 3  # ... until the delivery ends
    assert set(_latest(database).values()) == {"updated"} and len(_latest(database)) == 7


def test_a_journal_groups_at_least_one_record(database: str) -> None:
    with pytest.raises(ValueError, match="at least one record"):
        DeliveryJournal(database, "conversations", pd.DataFrame(), "run-1", every=0)


def test_a_journal_refuses_records_not_indexed_by_position(database: str) -> None:
    records = _records(database).head(3).set_axis([7, 8, 9])
    with pytest.raises(ValueError, match="reset_index"):
        DeliveryJournal(database, "conversations", records, "run-1", every=2)


def _stored(database: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Delivery rows and fingerprints, without the commit times (and run ids)."""
    with duckdb.connect(database, read_only=True) as conn:
        rows = conn.execute(
            "select * exclude (run_id, delivered_at) from planhat.deliveries order by key, status"
        ).fetchall()
        prints = conn.execute(
            "select * exclude (delivered_at) from planhat.delivery_fingerprints order by key"
        ).fetchall()
    return rows, prints


def test_a_group_stores_what_one_commit_a_record_stores_and_builds_its_rows_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mixed one-record outcomes: an _id or none, an error, request numbers or none
    def outcomes(records: pd.DataFrame, position: int) -> pd.DataFrame:
        row = deliveries.status_rows("conversations", records.iloc[[position]], "created")
        if position % 3 == 1:
            row["status"], row["error"] = "failed", f"HTTP 400 on {position}"
        else:
            row["planhat_id"] = None if position % 3 == 2 else f"{position:024x}"
            row["response"] = '{"_id": "x"}'
        if position % 2:
            row["request"], row["attempts"], row["batch"] = position, 1, position
        return row

    alone, grouped = str(tmp_path / "alone.duckdb"), str(tmp_path / "grouped.duckdb")
    records = _records(alone).head(7)
    checkpoint = deliveries.make_checkpoint(alone, records, "run-1")
    for position in range(7):
        checkpoint(outcomes(records, position))

    calls = {"rows": 0, "fingerprints": 0}
    real_rows, real_prints = deliveries.delivery_rows, deliveries.fresh_fingerprints

    def rows(*a: Any, **kw: Any) -> pd.DataFrame:
        calls["rows"] += 1
        return real_rows(*a, **kw)

    def prints(*a: Any, **kw: Any) -> pd.DataFrame:
        calls["fingerprints"] += 1
        return real_prints(*a, **kw)

    monkeypatch.setattr(deliveries, "delivery_rows", rows)
    monkeypatch.setattr(deliveries, "fresh_fingerprints", prints)
    kept = DeliveryJournal(grouped, "conversations", records, "run-1", every=7, intents=False)
    for position in range(7):
        kept.checkpoint(outcomes(records, position))
    assert kept.transactions == 1
    assert calls == {"rows": 1, "fingerprints": 1}  # once a group, not once a record
    assert _stored(grouped) == _stored(alone)
    assert len(_stored(grouped)[0]) == 7 and len(_stored(grouped)[1]) == 5


def test_a_grouped_one_record_delivery_frames_its_rows_once_a_group_not_once_a_request(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    framed: list[int] = []
    real = delivery._Rows.frame

    def counted(self: Any, index: pd.Index, positions: range | None = None) -> pd.DataFrame:
        frame = real(self, index, positions)
        framed.append(len(frame))
        return frame

    monkeypatch.setattr(delivery._Rows, "frame", counted)
    planhat = FakePlanhat(database)
    records = _records(database)
    with journal(database, "conversations", records, "run-1", every=EVERY) as kept:
        result = _deliver(planhat, records, kept)
    assert result.counts() == {"created": NOTES}
    # a frame of each group's outcomes (the intents build none), then the delivery's result
    assert framed == [50, 50, 20, NOTES]
    assert kept.transactions == 4
    assert planhat.doubt_seen == [True] * NOTES


def test_a_commit_upserts_fingerprints_by_key_keeping_an_id_no_answer_named(
    database: str,
) -> None:
    def commit(rows: list[tuple[str, str, str | None]]) -> None:
        records = pd.DataFrame(
            {
                "target": "conversations",
                "key": [key for key, _, _ in rows],
                "fingerprint": [print_ for _, print_, _ in rows],
                "fields": "{}",
            }
        )
        now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        outcomes = deliveries.status_rows("conversations", records, "created")
        outcomes["planhat_id"] = [planhat_id for _, _, planhat_id in rows]
        deliveries.commit_checkpoint(
            database,
            deliveries.delivery_rows(outcomes, records, "run-1", now),
            deliveries.fresh_fingerprints(outcomes, records, now),
        )

    commit([("a", "1", "id-a"), ("b", "1", "id-b")])
    commit([("a", "2", None), ("b", "2", "id-b2"), ("c", "2", None)])
    with duckdb.connect(database, read_only=True) as conn:
        stored = conn.execute(
            "select key, fingerprint, planhat_id from planhat.delivery_fingerprints order by key"
        ).fetchall()
    assert stored == [("a", "2", "id-a"), ("b", "2", "id-b2"), ("c", "2", None)]


def test_a_table_written_before_the_key_index_keeps_each_keys_newest_row_then_upserts(
    database: str,
) -> None:
    """A warehouse from before the unique index may hold a key twice: the first commit keeps
    the row of each key's latest delivery (with the Planhat id an older row knew, which the
    old upsert kept), leaves rows without a key alone, then updates in place."""
    with duckdb.connect(database) as conn:
        conn.execute("create schema planhat")
        conn.execute(
            "create table planhat.delivery_fingerprints (target varchar, key varchar,"
            " fingerprint varchar, fields varchar, delivered_at timestamptz, planhat_id varchar)"
        )
        conn.execute(
            "insert into planhat.delivery_fingerprints values"
            " ('conversations', 'a', 'old', '{}', '2025-01-01 00:00:00+00', 'id-old'),"
            " ('conversations', 'a', 'new', '{}', '2025-06-01 00:00:00+00', 'id-new'),"
            " ('companies', 'a', 'other', '{}', '2025-01-01 00:00:00+00', null),"
            " ('conversations', 'b', 'b1', '{}', '2025-01-01 00:00:00+00', 'id-b'),"
            " ('conversations', 'd', 'd1', '{}', '2025-01-01 00:00:00+00', 'id-d'),"
            " ('conversations', 'd', 'd2', '{}', '2025-06-01 00:00:00+00', null),"
            " ('conversations', null, 'n1', '{}', '2025-01-01 00:00:00+00', null),"
            " ('conversations', null, 'n2', '{}', '2025-01-01 00:00:00+00', null)"
        )
    records = pd.DataFrame(
        {"target": "conversations", "key": ["a", "c"], "fingerprint": "2", "fields": "{}"}
    )
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    outcomes = deliveries.status_rows("conversations", records, "updated")
    deliveries.commit_checkpoint(
        database,
        deliveries.delivery_rows(outcomes, records, "run-1", now),
        deliveries.fresh_fingerprints(outcomes, records, now),
    )
    with duckdb.connect(database, read_only=True) as conn:
        stored = conn.execute(
            "select target, key, fingerprint, planhat_id from planhat.delivery_fingerprints"
            " order by target, key nulls last, fingerprint"
        ).fetchall()
        indexes = conn.execute(
            "select index_name, is_unique from duckdb_indexes()"
            " where table_name = 'delivery_fingerprints'"
        ).fetchall()
    assert stored == [
        ("companies", "a", "other", None),
        ("conversations", "a", "2", "id-new"),
        ("conversations", "b", "b1", "id-b"),
        ("conversations", "c", "2", None),
        ("conversations", "d", "d2", "id-d"),  # the newest row, with the id an older one knew
        ("conversations", None, "n1", None),  # rows without a key are not duplicates
        ("conversations", None, "n2", None),
    ]
    assert indexes == [(deliveries.FINGERPRINT_KEY, True)]


class PacedPlanhat(FakePlanhat):
    """Each request takes ``seconds`` on the journal's clock."""

    def __init__(self, database: str, seconds: float) -> None:
        super().__init__(database)
        self.now = 0.0
        self.seconds = seconds

    def clock(self) -> float:
        return self.now

    def send(self, *args: Any, **kwargs: Any) -> Any:
        self.now += self.seconds
        return super().send(*args, **kwargs)


def _paced(
    planhat: PacedPlanhat, records: pd.DataFrame, every: int, group_seconds: float, **kw: Any
) -> Any:
    """Deliver ``records`` through a journal that paces its groups by ``planhat``'s clock."""
    kept = DeliveryJournal(
        planhat.database,
        "conversations",
        records,
        "run-1",
        every=every,
        group_seconds=group_seconds,
        clock=planhat.clock,
        **kw,
    )
    result = _deliver(planhat, records, kept)
    kept.flush()  # not when killed: nothing after a SIGKILL runs
    return result


def test_a_fast_delivery_grows_its_groups_to_about_a_second_of_sending(
    database: str, commits: list[tuple[int, bool]]
) -> None:
    """Commits are not free (a transaction, the file taken and released): at a millisecond a
    request, groups of 50 spend about as long committing as sending. A group grows to what
    the last one sent in ``group_seconds``; a crash then leaves about that much in doubt."""
    planhat = PacedPlanhat(database, seconds=0.001)
    records = _records(database)
    result = _paced(planhat, records, 10, 0.05)
    assert result.counts() == {"created": NOTES}
    assert planhat.doubt_seen == [True] * NOTES
    # the first group's 10 intents, then groups of 0.05 s of sending (50 records), the last
    # one what is left
    assert [rows for rows, _ in commits] == [10, 60, 100, 60, 10]
    assert set(_latest(database).values()) == {"created"}


def test_a_slow_delivery_keeps_groups_of_journal_every(
    database: str, commits: list[tuple[int, bool]]
) -> None:
    """Throttled (200 requests a minute against Planhat), a second of sending is a few
    records: groups stay at ``every``, so a crash leaves no more than that in doubt."""
    planhat = PacedPlanhat(database, seconds=0.3)
    records = _records(database)
    _paced(planhat, records, EVERY, 1.0)
    assert [rows for rows, _ in commits] == [50, 100, 70, 20]


def test_a_group_never_grows_past_the_largest_journal_every(
    database: str, commits: list[tuple[int, bool]]
) -> None:
    planhat = PacedPlanhat(database, seconds=0.0)  # no time at all between two commits
    records = _records(database)
    _paced(planhat, records, 10, 1.0, largest=40)
    assert [rows for rows, _ in commits] == [10, 50, 80, 70, 30]


class ThrottledPlanhat(PacedPlanhat):
    """Planhat answering in 5 ms behind the client's own quota (``SlidingWindowLimiter``, as
    ``PlanhatClient`` draws from it before each request): a fresh window lets its 200
    requests out at once, then makes the next ones wait for it to slide."""

    def __init__(self, database: str) -> None:
        super().__init__(database, seconds=0.005)
        self.limiter = SlidingWindowLimiter(200, clock=self.clock, sleeper=self.sleep)

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def send(self, *args: Any, **kwargs: Any) -> Any:
        self.limiter.acquire()
        return super().send(*args, **kwargs)


def test_a_group_covers_no_more_than_the_quota_lets_out_in_its_seconds(database: str) -> None:
    """The quota's window lets a burst out at once: the first group looks fast, and a group
    sized by its pace (200 records) would wait a minute for the window, all of it in doubt.
    Capped by the quota (200 a minute: 3 a second), a throttled delivery keeps groups of
    ``every``, and a crash leaves no more than that in doubt."""
    planhat = ThrottledPlanhat(database)
    planhat.kill_after_creates = 230  # killed after the window made requests wait
    source = pd.DataFrame(
        {"event_id": [f"n{i:04d}" for i in range(400)], "subject": ["note"] * 400}
    )
    records, _ = destination_records(
        source, DESTINATION, deliveries.empty_fingerprints(), planhat_ids={}, in_doubt=set()
    )
    with pytest.raises(Killed):
        _paced(planhat, records.reset_index(drop=True), EVERY, 1.0, requests_per_minute=200)
    in_doubt = [k for k, s in _latest(database).items() if s == "pending"]
    assert planhat.now > 60 and 0 < len(in_doubt) <= EVERY


def test_one_record_a_group_never_grows(database: str, commits: list[tuple[int, bool]]) -> None:
    planhat = PacedPlanhat(database, seconds=0.0)
    records = _records(database).head(5)
    _paced(planhat, records, 1, 1.0)
    assert [rows for rows, _ in commits] == [1, 2, 2, 2, 2, 1]


def test_updates_grow_their_groups_by_the_same_pace(database: str) -> None:
    records = _records(database).head(12)
    now = [0.0]
    kept = DeliveryJournal(
        database,
        "conversations",
        records,
        "run-1",
        every=2,
        intents=False,
        group_seconds=0.004,
        clock=lambda: now[0],
    )
    sizes = []
    for position in range(12):
        now[0] += 0.001
        before = kept.transactions
        kept.checkpoint(
            deliveries.status_rows("conversations", records.iloc[[position]], "updated")
        )
        if kept.transactions > before:
            sizes.append(position + 1)
    kept.flush()
    # 2 records, then groups of 4 (a millisecond each, 4 ms a group)
    assert sizes == [2, 6, 10]
    assert len(_latest(database)) == 12
