"""Forwarding the outbox to the firehose: checkpointed batches, refusals kept for the next run,
order per record, dry runs, and a full sync against the sandbox firehose."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml

from hull_planhat_pipelines.assets.hull_forwarding import forward
from hull_planhat_pipelines.cli import run_sync, sandboxes
from hull_planhat_pipelines.clients.http import RetryPolicy
from hull_planhat_pipelines.clients.hull import HullFirehoseClient
from hull_planhat_pipelines.orchestration import copper_range_tags
from hull_planhat_pipelines.resources import hull_firehose_resource
from hull_planhat_pipelines.sandbox.hull import HullFirehoseSandbox
from hull_planhat_pipelines.settings import ConfigError, default_config_path
from hull_planhat_pipelines.warehouse import append_table
from hull_planhat_pipelines.warehouse import outbox as outbox_store
from hull_planhat_pipelines.warehouse.outbox import OUTBOX_DDL
from hull_planhat_pipelines_tests.assets.test_hull_assets import (  # noqa: F401  (stack: a fixture)
    Stack,
    copper_start,
    stack,
)
from hull_planhat_pipelines_tests.fake_time import FakeTime

FAST = RetryPolicy(attempts=3, backoff_factor=0.5, backoff_max=8.0)


@dataclass
class Firehose:
    """The forwarding target with a fake clock; counts the warehouse connections open while
    each batch is on the wire, and the outbox rows left at that moment."""

    sandbox: HullFirehoseSandbox
    database: str
    batch_size: int = 50
    secret: str | None = None
    fake_time: FakeTime = field(default_factory=FakeTime)
    open_connections: int = 0
    seen: list[tuple[int, int]] = field(default_factory=list)
    """(open warehouse connections, outbox rows) when each batch went out."""

    enabled = True

    def client(self) -> HullFirehoseClient:
        firehose = self

        class Watched(HullFirehoseClient):
            def send_batch(self, batch: Any, number: int = 1) -> Any:
                with duckdb.connect(firehose.database) as conn:
                    left = conn.execute("select count(*) from hull.firehose_outbox").fetchone()
                firehose.seen.append((firehose.open_connections, left[0] if left else -1))
                return super().send_batch(batch, number)

        return Watched(
            self.sandbox.base_url,
            self.sandbox.organization,
            self.sandbox.connector_id,
            self.secret or self.sandbox.connector_secret,
            batch_size=self.batch_size,
            policy=FAST,
            sleeper=self.fake_time.sleep,
            clock=self.fake_time.time,
        )


@pytest.fixture
def warehouse(tmp_path: Path) -> str:
    path = str(tmp_path / "warehouse.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute("create schema hull")
        for statement in OUTBOX_DDL:
            conn.execute(statement)
    return path


@pytest.fixture
def firehose(
    hull_firehose: HullFirehoseSandbox, warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> Firehose:
    target = Firehose(hull_firehose, warehouse)
    real_connect = outbox_store.connect

    class Counted:
        def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
            self._conn = conn
            target.open_connections += 1

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

        def close(self) -> None:
            target.open_connections -= 1
            self._conn.close()

    monkeypatch.setattr(outbox_store, "connect", lambda path: Counted(real_connect(path)))
    return target


def traits_row(email: str, attributes: dict[str, Any], revision: str = "run-1") -> dict[str, Any]:
    return {
        "message_key": f"user_traits:{email}",
        "kind": "user_traits",
        "user_claims": json.dumps({"email": email}),
        "account_claims": None,
        "body": json.dumps(attributes),
        "revision": revision,
    }


def enqueue(database: str, rows: list[dict[str, Any]]) -> None:
    with duckdb.connect(database) as conn:
        last = conn.execute(
            "select greatest(coalesce(max(seq), 0), 0) from hull.firehose_outbox"
        ).fetchone()
        frame = pd.DataFrame(rows).astype("string")
        start = int(last[0]) + 1 if last else 1
        frame["seq"] = pd.Series(range(start, start + len(rows)), dtype="int64")
        append_table(conn, "hull.firehose_outbox", frame)


def outbox(database: str) -> list[tuple[int, str, str]]:
    with duckdb.connect(database) as conn:
        return conn.execute(
            "select seq, message_key, revision from hull.firehose_outbox order by seq"
        ).fetchall()


# -- the outbox, batch by batch ------------------------------------------------------------------
def test_the_outbox_drains_in_checkpointed_batches_and_a_refused_one_stays(
    firehose: Firehose, hull_firehose: HullFirehoseSandbox
) -> None:
    enqueue(firehose.database, [traits_row(f"u{i}@example.com", {"n": i}) for i in range(120)])
    hull_firehose.refuse_batches(1, after=1)  # the second batch is refused

    first = forward(firehose.database, firehose)
    assert (first.sent, first.failed, first.left, first.ok) == (70, 50, 50, False)
    # every delivered batch left the outbox before the next went out; no connection held
    assert firehose.seen == [(0, 120), (0, 70), (0, 70)]
    assert [seq for seq, _, _ in outbox(firehose.database)] == list(range(51, 101))
    assert {e.event for e in first.events} == {"incoming.job.error"}
    assert len(first.events) == 50 and "batch refused" in (first.events[0].reason or "")

    retry = forward(firehose.database, firehose)
    assert (retry.sent, retry.failed, retry.left, retry.ok) == (50, 0, 0, True)
    assert outbox(firehose.database) == []
    assert len({m.user["email"] for m in hull_firehose.messages if m.user}) == 120


def test_the_outbox_is_read_a_batch_at_a_time(
    firehose: Firehose, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue(firehose.database, [traits_row(f"p{i}@example.com", {"n": i}) for i in range(120)])
    pages: list[int] = []
    real_page = outbox_store.page

    def counted(database: str, after: int | None, limit: int) -> pd.DataFrame:
        rows = real_page(database, after, limit)
        pages.append(len(rows))
        return rows

    monkeypatch.setattr(outbox_store, "page", counted)
    assert forward(firehose.database, firehose).ok
    assert pages == [50, 50, 20]  # never the whole outbox in memory
    assert firehose.seen == [(0, 120), (0, 70), (0, 20)]


def test_another_process_writes_the_warehouse_while_a_batch_is_on_the_wire(
    hull_firehose: HullFirehoseSandbox, warehouse: str
) -> None:
    """DuckDB lets one process write a file at a time: a forwarding that held its connection
    across the request (or its backoff) would lock out every other writer meanwhile."""
    writes: list[int] = []
    script = (
        "import sys, duckdb\n"
        "conn = duckdb.connect(sys.argv[1])\n"
        "conn.execute('create table if not exists main.during (batch int)')\n"
        "conn.execute('insert into main.during values (?)', [int(sys.argv[2])])\n"
        "conn.close()\n"
    )

    class WritingDuringRequests(Firehose):
        def client(self) -> HullFirehoseClient:
            inner = super().client()
            real_send = inner.send_batch

            def send_batch(batch: Any, number: int = 1) -> Any:
                done = subprocess.run(
                    [sys.executable, "-c", script, warehouse, str(number)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert done.returncode == 0, done.stderr  # the file was not locked
                writes.append(number)
                return real_send(batch, number)

            inner.send_batch = send_batch  # type: ignore[method-assign]
            return inner

    enqueue(warehouse, [traits_row(f"w{i}@example.com", {"n": i}) for i in range(60)])
    hull_firehose.refuse_batches(1, after=1)  # the second batch is refused: a retry follows
    result = forward(warehouse, WritingDuringRequests(hull_firehose, warehouse))
    assert (result.sent, result.failed) == (50, 10)
    assert writes == [1, 2]
    with duckdb.connect(warehouse) as conn:
        assert conn.execute("select batch from main.during order by 1").fetchall() == [(1,), (2,)]
        assert conn.execute("select count(*) from hull.firehose_outbox").fetchone() == (10,)


def test_later_messages_about_a_refused_record_wait_behind_it(
    firehose: Firehose, hull_firehose: HullFirehoseSandbox
) -> None:
    firehose.batch_size = 2
    enqueue(
        firehose.database,
        [
            traits_row("a@example.com", {"plan": "old"}, "run-1"),
            traits_row("b@example.com", {"plan": "b"}, "run-1"),
            traits_row("a@example.com", {"plan": "new"}, "run-2"),
            traits_row("c@example.com", {"plan": "c"}, "run-2"),
        ],
    )
    hull_firehose.refuse_batches(1)
    first = forward(firehose.database, firehose)
    assert (first.sent, first.failed, first.held) == (1, 2, 1)
    assert [key for _, key, _ in outbox(firehose.database)] == [
        "user_traits:a@example.com",
        "user_traits:b@example.com",
        "user_traits:a@example.com",
    ]
    held = [e for e in first.events if e.event == "incoming.job.skip"]
    assert [e.object_id for e in held] == ["user_traits:a@example.com"]

    assert forward(firehose.database, firehose).ok
    assert hull_firehose.traits_for_user("a@example.com") == {"plan": "new"}  # order kept


def test_a_resend_after_a_crash_before_the_checkpoint_is_harmless(
    firehose: Firehose, hull_firehose: HullFirehoseSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = {
        "message_key": "track:ev-1",
        "kind": "track",
        "user_claims": json.dumps({"email": "a@example.com"}),
        "account_claims": None,
        "body": json.dumps(
            {
                "event_id": "ev-1",
                "name": "Meeting",
                "properties": {"n": 1},
                "occurred_at": "2024-05-01T10:00:00+00:00",
                "source": "copper",
            }
        ),
        "revision": "run-1",
    }
    enqueue(firehose.database, [traits_row("a@example.com", {"plan": "p"}), event])

    def crash(database: str, seqs: list[int]) -> None:
        raise RuntimeError("killed before the checkpoint")

    checkpoint = outbox_store.checkpoint
    monkeypatch.setattr(outbox_store, "checkpoint", crash)
    with pytest.raises(RuntimeError):
        forward(firehose.database, firehose)
    monkeypatch.setattr(outbox_store, "checkpoint", checkpoint)
    assert len(outbox(firehose.database)) == 2

    assert forward(firehose.database, firehose).ok
    assert len(hull_firehose.messages) == 4  # the batch arrived twice ...
    [stored] = hull_firehose.events()  # ... and Hull holds one event, dated when it happened
    assert stored.body["created_at"] == "2024-05-01T10:00:00.000Z"
    assert hull_firehose.traits_for_user("a@example.com") == {"plan": "p"}


def test_a_dry_run_sends_nothing_and_keeps_the_outbox(
    firehose: Firehose, hull_firehose: HullFirehoseSandbox
) -> None:
    enqueue(firehose.database, [traits_row("a@example.com", {"plan": "p"})])
    result = forward(firehose.database, firehose, dry_run=True)
    assert result.ok and result.dry_run and result.pending == 1 and result.sent == 0
    assert result.by_kind == {"user_traits": 1}
    assert hull_firehose.server.recorded() == [] and len(outbox(firehose.database)) == 1


def test_an_unavailable_firehose_ends_the_run_and_loses_nothing(
    firehose: Firehose, hull_firehose: HullFirehoseSandbox
) -> None:
    firehose.batch_size = 1
    enqueue(firehose.database, [traits_row(f"u{i}@example.com", {"n": i}) for i in range(3)])
    hull_firehose.server.faults.add(status=503, times=FAST.attempts)
    result = forward(firehose.database, firehose)
    assert not result.ok and result.stopped and "unavailable" in result.stopped
    assert (result.sent, result.failed, result.left) == (0, 1, 3)
    assert len(hull_firehose.server.recorded("POST")) == FAST.attempts  # one batch, retried
    assert firehose.fake_time.sleeps == [0.5, 1.0]
    assert len(outbox(firehose.database)) == 3


def test_wrong_credentials_stop_the_forwarding_without_showing_the_secret(
    firehose: Firehose, hull_firehose: HullFirehoseSandbox
) -> None:
    firehose.secret = "a-wrong-secret-that-is-long-enough-0000"
    enqueue(firehose.database, [traits_row("a@example.com", {"plan": "p"})])
    result = forward(firehose.database, firehose)
    assert not result.ok and result.stopped and "401" in result.stopped
    shown = " ".join(str(e.reason) for e in result.events) + str(result.metadata())
    assert "Unauthorized" in shown and firehose.secret not in shown
    assert len(outbox(firehose.database)) == 1


def test_an_outbox_from_before_numbering_is_numbered_and_sent_first(
    tmp_path: Path, hull_firehose: HullFirehoseSandbox
) -> None:
    database = str(tmp_path / "old.duckdb")
    with duckdb.connect(database) as conn:
        conn.execute("create schema hull")
        conn.execute(
            "create table hull.firehose_outbox (message_key varchar, kind varchar, "
            "user_claims varchar, account_claims varchar, body varchar, revision varchar)"
        )
        frame = pd.DataFrame([traits_row("a@example.com", {"plan": "old"})]).astype("string")
        append_table(conn, "hull.firehose_outbox", frame)
        for statement in OUTBOX_DDL:
            conn.execute(statement)
    enqueue(database, [traits_row("a@example.com", {"plan": "new"}, "run-2")])
    assert [(seq < 1, rev) for seq, _, rev in outbox(database)] == [
        (True, "run-1"),
        (False, "run-2"),
    ]
    assert forward(database, Firehose(hull_firehose, database)).ok
    assert hull_firehose.traits_for_user("a@example.com") == {"plan": "new"}


# -- a whole sync ------------------------------------------------------------------------------
def _claims(row: Any, kind: str) -> dict[str, str]:
    ids = list(row.anonymous_ids) if row.anonymous_ids is not None else []
    claims = {
        ("email" if kind == "user" else "domain"): row.email if kind == "user" else row.domain,
        "external_id": row.external_id,
        "anonymous_id": ids[0] if ids else None,
    }
    return {k: v for k, v in claims.items() if isinstance(v, str) and v}


def _check(result: dg.ExecuteInProcessResult) -> Any:
    [check] = [
        c for c in result.get_asset_check_evaluations() if c.check_name == "hull_firehose_forwarded"
    ]
    return check


def assert_everything_forwarded(warehouse: Path, firehose: HullFirehoseSandbox) -> None:
    """Every profile's attributes, every link and every event of the store reached the
    firehose, under the claims of the store, each event dated when it happened."""
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        users = conn.execute("select * from hull.users").fetchdf()
        accounts = conn.execute("select * from hull.accounts").fetchdf()
        events = conn.execute("select event_id, user_hull_id, occurred_at from hull.events")
        event_rows = events.fetchall()
        outbox = conn.execute("select count(*) from hull.firehose_outbox").fetchone()
    assert outbox == (0,)
    user_claims = {row.hull_id: _claims(row, "user") for row in users.itertuples()}
    account_claims = {row.hull_id: _claims(row, "account") for row in accounts.itertuples()}

    for row in users.itertuples():
        keys = set(json.loads(row.attributes))
        assert set(firehose.traits_for_user(user_claims[row.hull_id])) == keys, row.hull_id
    for row in accounts.itertuples():
        keys = set(json.loads(row.attributes))
        assert set(firehose.traits_for_account(account_claims[row.hull_id])) == keys, row.hull_id
    expected_links = sorted(
        (json.dumps(user_claims[row.hull_id]), json.dumps(account_claims[row.account_hull_id]))
        for row in users.itertuples()
        if isinstance(row.account_hull_id, str)
    )
    links = sorted({(json.dumps(u), json.dumps(a)) for u, a in firehose.links()})
    assert expected_links and links == expected_links
    forwarded = {e.body["event_id"]: e for e in firehose.events()}
    assert event_rows and set(forwarded) == {event_id for event_id, _, _ in event_rows}
    for event_id, user_hull_id, occurred_at in event_rows:
        assert forwarded[event_id].user == user_claims[user_hull_id]
        when = pd.Timestamp(forwarded[event_id].body["created_at"])
        assert when == pd.Timestamp(occurred_at)  # the event's time, not its arrival
    assert firehose.refusals == []


def test_a_sync_forwards_every_change_once_and_a_second_sync_nothing(stack: Stack) -> None:  # noqa: F811
    first = stack.sync()
    assert first.success and _check(first).passed
    assert_everything_forwarded(stack.warehouse, stack.firehose)
    calls = len(stack.firehose.server.recorded("POST"))

    second = stack.sync()
    assert second.success and _check(second).passed
    assert len(stack.firehose.server.recorded("POST")) == calls  # nothing forwarded


def test_the_sandbox_command_serves_the_firehose_and_a_full_sync_forwards_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hull-planhat sandbox`` / ``demo``: the firehose's exports, then ``sync`` twice."""
    config = yaml.safe_load(default_config_path().read_text())
    start = copper_start(dt.datetime.now(dt.UTC).date())
    config["copper"]["start_date"] = start.isoformat()
    # A full sync fetches up to the activity horizon: two weeks ahead, not a year of days.
    config["copper"]["activity_horizon_days"] = 14
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("HULL_PLANHAT_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("HULL_PLANHAT_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with sandboxes(seed=1, scale=0.05) as running:
        firehose = running.firehose
        assert {k: running.env[k] for k in firehose.env()} == firehose.env()
        for name, value in running.env.items():
            monkeypatch.setenv(name, value)
        first = run_sync(full=True)
        assert first.ok, first.table()
        assert_everything_forwarded(tmp_path / "warehouse.duckdb", firehose)
        calls = len(firehose.server.recorded("POST"))
        assert calls > 0 and running.firehose_messages() > 0

        second = run_sync()
        assert second.ok, second.table()
        assert len(firehose.server.recorded("POST")) == calls  # a settled loop forwards nothing


def test_a_sync_whose_forwarding_failed_reports_a_failed_error_check(stack: Stack) -> None:  # noqa: F811
    stack.firehose.refuse_batches(10_000)
    first = stack.sync()
    assert first.success  # the profiles are applied and the chain downstream runs ...
    check = _check(first)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR  # ... not exit 0
    assert "not delivered" in (check.description or "")
    pending = stack.query("select count(*) from hull.firehose_outbox")[0][0]
    assert pending > 0 and stack.firehose.messages == []

    stack.firehose.refuse_batches(0)
    retry = stack.run("hull_sync")
    assert retry.success and _check(retry).passed
    assert stack.query("select count(*) from hull.firehose_outbox") == [(0,)]
    assert len(stack.firehose.messages) == pending


def test_a_dry_run_sync_writes_nothing_to_the_firehose(stack: Stack) -> None:  # noqa: F811
    config = {"ops": {"hull_profiles": {"config": {"dry_run": True}}}}
    assert stack.run("copper_sync", tags=_range(stack)).success
    result = stack.run("hull_sync", run_config=config)
    assert result.success and _check(result).passed
    assert "dry run" in (_check(result).description or "")
    assert stack.firehose.server.recorded() == []
    assert stack.query("select count(*) from hull.firehose_outbox")[0][0] > 0


def _range(stack: Stack) -> dict[str, str]:  # noqa: F811
    return copper_range_tags(stack.start, stack.today)


# -- start-up ------------------------------------------------------------------------------------
def test_forwarding_with_a_malformed_connector_id_is_refused_at_start_up(
    hull_firehose: HullFirehoseSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in hull_firehose.env().items():
        monkeypatch.setenv(name, value)
    assert hull_firehose_resource().enabled
    monkeypatch.setenv("HULL_CONNECTOR_ID", hull_firehose.connector_secret)  # a classic mix-up
    with pytest.raises(ConfigError, match="24-character hexadecimal id") as raised:
        hull_firehose_resource()
    assert raised.value.key_path == "HULL_CONNECTOR_ID"
    assert hull_firehose.connector_secret not in str(raised.value)
    monkeypatch.delenv("HULL_CONNECTOR_SECRET")
    with pytest.raises(ConfigError, match="HULL_CONNECTOR_SECRET"):
        hull_firehose_resource()
    monkeypatch.delenv("HULL_FIREHOSE_URL")
    assert not hull_firehose_resource().enabled
