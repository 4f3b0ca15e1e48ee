"""A user's bad day, over real HTTP: real ``hull-planhat sync`` processes killed, run twice at
once, refused part-way, answered ambiguously. What is checked is what Planhat holds."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hull_planhat_pipelines.assets import destinations as destination_asset
from hull_planhat_pipelines.cli import EXIT_BUSY, EXIT_OK, EXIT_RECORDS_FAILED
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.sandbox.server import Fault, Request, Response
from hull_planhat_pipelines.warehouse import WarehouseBusy, delivery_lock
from hull_planhat_pipelines.warehouse.locks import read_holder
from hull_planhat_pipelines_tests.assets.test_outgoing_assets import Stack, _started
from hull_planhat_pipelines_tests.processes import kill_when

SYNC_TIMEOUT = 600
"""A hung sync fails the test instead of hanging the suite (not a timing assertion)."""


def _sync_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hull_planhat_pipelines.cli", "sync", *args]


def _env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "HULL_FIREHOSE_URL")}
    return {**env, **stack.env()}


def _sync(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _sync_command(*args),
        env=_env(stack),
        capture_output=True,
        text=True,
        timeout=SYNC_TIMEOUT,
        check=False,
    )


def _conversation_keys(planhat: PlanhatSandbox) -> collections.Counter[tuple[Any, ...]]:
    """What Planhat holds, read back over HTTP as the drill does."""
    import requests

    rows = requests.get(
        f"{planhat.rest_url}/conversations",
        params={"limit": 2000},
        headers={"Authorization": f"Bearer {planhat.api_token}"},
        timeout=30,
    ).json()
    return collections.Counter(
        (c.get("subject"), c.get("description"), str(c.get("date")), c.get("companyId"))
        for c in rows
    )


def _on_write(
    planhat: PlanhatSandbox, path: str, count: int, *, analytics: bool = False
) -> tuple[threading.Event, threading.Event]:
    """Events set when the ``count``-th write to ``path`` arrives (before it is applied and
    answered) and when it has been applied."""
    reached, applied = threading.Event(), threading.Event()
    seen = [0]
    lock = threading.Lock()
    server = planhat.analytics if analytics else planhat.rest
    dispatch = server.dispatch

    def counting(request: Request) -> Response:
        nth = False
        if request.method in ("POST", "PUT") and request.path.startswith(path):
            with lock:
                seen[0] += 1
                nth = seen[0] == count
            if nth:
                reached.set()
        try:
            return dispatch(request)
        finally:
            if nth:
                applied.set()

    server.dispatch = counting  # type: ignore[method-assign]
    return reached, applied


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # Planhat's soft quota on (with its X-Rate-Limit headers): these tests count requests.
    with _started(tmp_path, rate_limit_per_minute=200) as started:
        yield started


@pytest.mark.parametrize("journal_every", [1, None], ids=["one-per-record", "grouped"])
def test_a_sync_killed_mid_delivery_then_rerun_leaves_every_conversation_once(
    stack: Stack, journal_every: int | None
) -> None:
    """Case 1: SIGKILL while conversations are being created (one in flight), then a rerun.

    One record per journal transaction: only the one in flight is in doubt. Grouped (the
    default): the whole group the kill interrupted is in doubt, and is read back."""
    if journal_every is not None:

        def edit(config: dict[str, Any]) -> None:
            for destination in config["destinations"]:
                destination["journal_every"] = journal_every

        stack.configure(edit)
    stack.planhat.rest.faults.add(Fault(status=0, delay=0.05, path="^/conversations", times=10**6))
    reached, applied = _on_write(stack.planhat, "/conversations", 3)
    proc = kill_when(_sync_command("--full"), _env(stack), reached, SYNC_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    assert applied.wait(SYNC_TIMEOUT)
    stack.planhat.rest.faults.clear()
    killed_with = sum(_conversation_keys(stack.planhat).values())
    assert killed_with == 3  # two answered, the third landed while its answer was lost
    in_doubt = stack.query(
        "select count(*) from (select key, status from planhat.deliveries "
        "where target = 'conversations' qualify row_number() over (partition by key "
        "order by delivered_at desc, (status = 'pending')) = 1) where status = 'pending'"
    )[0][0]
    stack.planhat.rest.clear_requests()
    rerun = _sync(stack)
    assert rerun.returncode == EXIT_OK, rerun.stdout + rerun.stderr
    held = _conversation_keys(stack.planhat)
    notes = stack.query("select count(*) from hull.events where name = 'Note'")[0][0]
    assert held and max(held.values()) == 1, [k for k, n in held.items() if n > 1]
    assert sum(held.values()) > killed_with, rerun.stdout + rerun.stderr
    assert sum(held.values()) <= notes
    read_back = stack.planhat.rest.recorded("GET", r"^/conversations/extid-")
    updated = stack.planhat.rest.recorded("PUT", r"^/conversations/[0-9a-f]{24}$")
    if journal_every == 1:
        # The one in flight was read back by its externalId and updated, not created again.
        assert in_doubt == 1
        assert len(read_back) == 1
        assert len(updated) == 1
    else:
        # The group in doubt was read back; the three that landed were updated, not created
        # again (the two answered ones too: their outcomes were still held in memory).
        assert 3 <= in_doubt <= 50
        assert len(read_back) == in_doubt
        assert len(updated) == killed_with
    again = _sync(stack)
    assert again.returncode == EXIT_OK
    assert _conversation_keys(stack.planhat) == held


def test_a_sync_killed_while_posting_activities_never_posts_them_twice(stack: Stack) -> None:
    """Case 1, activities: killed while the second batch is posted (it lands, its answer is
    lost). Analytics cannot be read back: that batch is recorded ``unknown`` and not posted
    again; the rest goes once."""

    def small_batches(config: dict[str, Any]) -> None:
        config["planhat"]["analytics_batch_size"] = 3

    stack.configure(small_batches)
    stack.planhat.analytics.faults.add(
        Fault(status=0, delay=0.05, path="^/analytics/bulk/", times=10**6)
    )
    reached, applied = _on_write(stack.planhat, "/analytics/bulk/", 2, analytics=True)
    proc = kill_when(_sync_command("--full"), _env(stack), reached, SYNC_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    assert applied.wait(SYNC_TIMEOUT)
    stack.planhat.analytics.faults.clear()
    rerun = _sync(stack)
    assert rerun.returncode == EXIT_RECORDS_FAILED, rerun.stdout + rerun.stderr
    unknown = stack.query(
        "select count(*) from planhat.deliveries where target = 'activities' and status = 'unknown'"
    )[0][0]
    in_flight = stack.planhat.analytics.recorded("POST", r"^/analytics/bulk/")[1].body
    assert unknown == len(in_flight) >= 1
    landed = collections.Counter(
        json.dumps(a, sort_keys=True, default=str)
        for a in (
            {k: v for k, v in a.items() if k != "receivedAt"} for a in stack.planhat.activities
        )
    )
    assert landed and max(landed.values()) == 1
    posted = [
        json.dumps(item, sort_keys=True)
        for r in stack.planhat.analytics.recorded("POST", r"^/analytics/bulk/")
        for item in r.body
    ]
    keys = stack.query(
        "select count(distinct key) from planhat.deliveries where target = 'activities'"
    )[0][0]
    assert len(posted) == len(set(posted)) == keys  # every activity posted exactly once
    assert _sync(stack).returncode == EXIT_OK


def test_two_syncs_at_once_one_delivers_the_other_is_refused_naming_the_holder(
    stack: Stack,
) -> None:
    """Case 2: two real sync processes on one warehouse; Planhat holds each record once."""
    stack.planhat.rest.faults.add(Fault(status=0, delay=0.02, path="^/conversations", times=10**6))
    procs = [
        subprocess.Popen(
            _sync_command("--full", "--wait", "0"),
            env=_env(stack),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=SYNC_TIMEOUT) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [EXIT_OK, EXIT_BUSY], outputs
    refused = next(err for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode)
    assert "another sync holds the warehouse" in refused and "pid " in refused
    assert "run cli-sync-" in refused and "since " in refused
    held = _conversation_keys(stack.planhat)
    assert held and max(held.values()) == 1
    companies = collections.Counter(c.get("externalId") for c in stack.planhat.companies())
    assert max(n for ext, n in companies.items() if ext) == 1


def test_an_auth_failure_part_way_keeps_what_was_accepted(stack: Stack) -> None:
    """Case 3: a 401 after three conversations; those three are not posted again."""
    stack.planhat.rest.faults.add(
        Fault(status=401, path="^/conversations", method="POST", after=3, times=10**6)
    )
    first = _sync(stack, "--full")
    assert first.returncode == 1, first.stdout
    assert "destination_conversations" in first.stdout and "refused (401)" in first.stdout
    assert sum(_conversation_keys(stack.planhat).values()) == 3
    stack.planhat.rest.faults.clear()
    stack.planhat.rest.clear_requests()
    second = _sync(stack)
    assert second.returncode == EXIT_OK, second.stdout + second.stderr
    held = _conversation_keys(stack.planhat)
    assert max(held.values()) == 1
    posted = stack.planhat.rest.recorded("POST", "^/conversations$")
    assert len(posted) == sum(held.values()) - 3  # the three accepted were not sent again


def test_analytics_failing_exits_non_zero_then_recovers_with_zero(stack: Stack) -> None:
    """Case 6: every analytics write answers 500: the sync says so, then recovers."""
    stack.planhat.analytics.faults.add(Fault(status=500, path="^/", method="POST", times=10**6))
    first = _sync(stack, "--full")
    assert first.returncode == EXIT_RECORDS_FAILED, first.stdout + first.stderr
    assert "FAILED" in first.stdout and "records_reached_planhat" in first.stdout
    assert "completed with errors" in first.stdout
    stack.planhat.analytics.faults.clear()
    second = _sync(stack)
    assert second.returncode == EXIT_OK, second.stdout + second.stderr
    assert stack.planhat.activities and stack.planhat.dimension_data


def test_a_dry_run_writes_nothing_records_nothing_and_shows_samples(stack: Stack) -> None:
    """Case 10: no API write, no delivery rows, no fingerprints; samples per target."""
    result = _sync(stack, "--full", "--dry-run")
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert stack.planhat.write_count() == 0
    assert "would send to companies" in result.stdout
    assert "would send to conversations" in result.stdout
    assert not stack.has_table("planhat", "deliveries")
    assert not stack.has_table("planhat", "delivery_fingerprints")


# -- in process: answers lost, records edited --------------------------------------------------
def _conversation_events(stack: Stack) -> list[str]:
    """Event ids of the notes the conversations destination delivered."""
    rows = stack.query(
        "select key from planhat.deliveries where target = 'conversations' and status = 'created'"
    )
    return [str(r[0]) for r in rows]


def test_a_create_whose_answer_is_lost_is_read_back_not_posted_again(stack: Stack) -> None:
    """Case 4: the second conversation lands but its answer never comes back (reset)."""
    stack.planhat.rest.faults.add(
        Fault(status=0, drop=True, path="^/conversations$", method="POST", after=1, times=1)
    )
    first = stack.cycle()
    conversations = [s for s in first.steps if s.step == "planhat/destination_conversations"]
    assert conversations[0].failed_checks == ["records_reached_planhat"]
    assert first.exit_status == EXIT_RECORDS_FAILED
    unknown = stack.query(
        "select key, error, attempts from planhat.deliveries "
        "where target = 'conversations' and status = 'unknown'"
    )
    assert len(unknown) == 1
    assert "failed after 1 attempt:" in unknown[0][1] and unknown[0][2] == 1
    assert "6 attempts" not in unknown[0][1]
    held = sum(_conversation_keys(stack.planhat).values())
    stack.planhat.rest.clear_requests()
    second = stack.cycle()
    assert second.exit_status == EXIT_OK
    assert sum(_conversation_keys(stack.planhat).values()) == held
    assert max(_conversation_keys(stack.planhat).values()) == 1
    assert len(stack.planhat.rest.recorded("GET", r"^/conversations/extid-")) == 1
    assert stack.planhat.rest.recorded("POST", "^/conversations$") == []


def test_an_edited_note_updates_the_conversation_it_created(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 5: a Copper note whose text changed becomes an update, not a second record. Only
    that note is read and mapped again: the others map to what Planhat was sent."""
    mapped: list[int] = []
    original = destination_asset.map_rows

    def counted(source: Any, destination: Any) -> Any:
        mapped.append(len(source))
        return original(source, destination)

    monkeypatch.setattr(destination_asset, "map_rows", counted)
    stack.cycle()
    assert mapped and mapped[0] > 1  # the first run maps every note
    held = _conversation_keys(stack.planhat)
    event = _conversation_events(stack)[0]
    activity = stack.copper.record("activities", int(event.rsplit(":", 1)[-1]))
    assert activity is not None
    edited = {**activity, "details": "Edited: the contract was signed"}
    edited["date_modified"] = stack.copper.clock()
    stack.copper.upsert_records("activities", [edited])
    stack.planhat.rest.clear_requests()
    stack.cycle()
    after = _conversation_keys(stack.planhat)
    assert sum(after.values()) == sum(held.values())
    assert max(after.values()) == 1
    assert any(description == "Edited: the contract was signed" for _, description, *_ in after)
    assert stack.planhat.rest.recorded("POST", "^/conversations$") == []
    assert len(stack.planhat.rest.recorded("PUT", r"^/conversations/[0-9a-f]{24}$")) == 1
    assert mapped[1:] == [1], mapped  # the edited note alone


def _enduser_key(item: dict[str, Any]) -> str:
    """The payload key of an enduser: ``external_id:<id>``, else ``email:<email>``."""
    if item.get("externalId"):
        return f"external_id:{item['externalId']}"
    return f"email:{item.get('email')}"


def _delete_the_company_with_most_endusers(stack: Stack) -> tuple[str, set[str], int]:
    """Prepared and delivered, then the company with most of our endusers deleted in Planhat
    (its endusers go with it): its external id, its endusers' keys, and how many companies
    held endusers of ours before."""
    stack.prepare()
    stack.deliver()
    ours = {
        str(k)
        for (k,) in stack.query(
            "select key from planhat.delivery_fingerprints where target = 'endusers'"
        )
    }
    companies = {c["_id"]: c for c in stack.planhat.companies() if c.get("externalId")}
    members: dict[str, set[str]] = collections.defaultdict(set)
    for enduser in stack.planhat.endusers():
        if _enduser_key(enduser) in ours and enduser["companyId"] in companies:
            members[enduser["companyId"]].add(_enduser_key(enduser))
    gone_id = max(members, key=lambda cid: len(members[cid]))
    requests_lib().delete(
        f"{stack.planhat.rest_url}/companies/{gone_id}",
        headers={"Authorization": f"Bearer {stack.planhat.api_token}"},
        timeout=10,
    ).raise_for_status()
    return companies[gone_id]["externalId"], members[gone_id], len(members)


def test_endusers_planhat_drops_are_settled_against_the_next_snapshot(stack: Stack) -> None:
    """Case 7: a company deleted in Planhat after our snapshot; Planhat's answer names only
    ``_id``s and silently drops its endusers. The next delivery confirms the others from the
    snapshot (not re-sent), recreates the company, then sends its endusers: each once."""
    gone, members, companies = _delete_the_company_with_most_endusers(stack)
    assert companies >= 2  # endusers of other companies share the batch
    forced = stack.run(
        "planhat_delivery", {"ops": {"planhat__enduser_payloads": {"config": {"force": True}}}}
    )
    assert forced.success
    statuses = dict(
        stack.query(
            "select key, status from planhat.deliveries where target = 'endusers' and run_id = ?",
            [forced.run_id],
        )
    )
    assert "unconfirmed" in statuses.values()
    assert set(statuses.values()) <= {"unconfirmed", "error"}  # errors: refused by name
    refused = {k for k, v in statuses.items() if v == "error"}
    check = [c for c in forced.get_asset_check_evaluations() if c.check_name.startswith("records")]
    assert check and not check[0].passed

    assert stack.run("planhat_fetch").success
    stack.planhat.rest.clear_requests()
    settled = stack.run("planhat_delivery")
    assert settled.success
    sent = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    assert sorted(_enduser_key(i) for i in sent) == sorted(members | refused)
    companies_sent = [i for r in stack.planhat.rest.recorded("PUT", "^/companies$") for i in r.body]
    assert [i["externalId"] for i in companies_sent] == [gone]
    assert [c.get("externalId") for c in stack.planhat.companies()].count(gone) == 1
    held = collections.Counter((_enduser_key(e), e["companyId"]) for e in stack.planhat.endusers())
    assert max(held.values()) == 1
    assert {_enduser_key(e) for e in stack.planhat.endusers()} >= members
    dropped = stack.query(
        "select reason from ops.sync_log where event = 'outgoing.user.error' and run_id = ?",
        [settled.run_id],
    )
    assert dropped and {r[0] for r in dropped} == {"Dropped by Planhat: company not in Planhat"}
    assert all(c.passed for c in settled.get_asset_check_evaluations())


@pytest.mark.parametrize("failure", ["refused", "killed"])
def test_endusers_following_a_recreated_company_are_sent_after_their_request_failed(
    stack: Stack, failure: str
) -> None:
    """A company deleted in Planhat is recreated and its endusers follow it, unchanged. When
    the company is taken and the endusers' request is refused, or the sync is killed (SIGKILL)
    while that request waits for its answer, the company is no longer missing and the
    endusers' payloads match what Planhat had before: the next run must still send them,
    once."""
    gone, members, _ = _delete_the_company_with_most_endusers(stack)
    assert stack.run("planhat_fetch").success  # the snapshot no longer holds it
    assert not {_enduser_key(e) for e in stack.planhat.endusers()} & members

    stack.planhat.rest.clear_requests()
    if failure == "refused":
        stack.planhat.rest.faults.add(
            Fault(status=400, path="^/endusers$", method="PUT", times=10**6)
        )
        stack.run("planhat_delivery")  # the company is recreated; its endusers are refused
    else:  # killed while the endusers' request waits (it is never applied)
        stack.planhat.rest.faults.add(
            Fault(status=503, delay=20, path="^/endusers$", method="PUT", times=1)
        )
        reached, _ = _on_write(stack.planhat, "/endusers", 1)
        proc = kill_when(_sync_command(), _env(stack), reached, SYNC_TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
    companies_sent = [i for r in stack.planhat.rest.recorded("PUT", "^/companies$") for i in r.body]
    assert [i["externalId"] for i in companies_sent] == [gone]
    assert not {_enduser_key(e) for e in stack.planhat.endusers()} & members

    stack.planhat.rest.faults.clear()
    stack.planhat.rest.clear_requests()
    stack.run("planhat_delivery")
    sent = [i for r in stack.planhat.rest.recorded("PUT", "^/endusers$") for i in r.body]
    assert sorted(_enduser_key(i) for i in sent) == sorted(members)
    assert not stack.planhat.rest.recorded("PUT", "^/companies$")
    held = collections.Counter((_enduser_key(e), e["companyId"]) for e in stack.planhat.endusers())
    assert max(held.values()) == 1
    assert {_enduser_key(e) for e in stack.planhat.endusers()} >= members

    # taken: the next run sends nothing
    stack.planhat.rest.clear_requests()
    assert stack.run("planhat_delivery").success
    assert not stack.planhat.rest.recorded("PUT", "^/endusers$")


def requests_lib():
    import requests

    return requests


# -- the lock, beside a Dagster run ------------------------------------------------------------
HOLD = """
import sys
from hull_planhat_pipelines.warehouse import delivery_lock
with delivery_lock(sys.argv[1], "holder-run-1"):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def _held(database: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the warehouse's delivery lock until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(SYNC_TIMEOUT)


def test_a_second_deliverer_waits_bounded_then_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    database = tmp_path / "warehouse.duckdb"
    clock = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    second = delivery_lock(str(database), "second", wait=5, sleeper=sleep, clock=lambda: clock[0])
    with _held(database) as holder, pytest.raises(WarehouseBusy) as refused, second:
        pytest.fail("two deliverers held the lock")
    assert sum(waits) >= 5 and len(waits) > 1  # it waited (bounded), then gave up
    message = str(refused.value)
    assert f"pid {holder.pid}" in message and "run holder-run-1" in message
    assert "since 20" in message
    with delivery_lock(str(database), "after"):  # released when the holder ended
        pass


# A holder between its lock and its record (just taken), or between clearing it and letting go.
HOLD_THEN_NAME = """
import fcntl, json, os, sys, time
handle = open(sys.argv[1] + ".lock", "a+")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
if sys.argv[3] == "name":
    handle.write(json.dumps({"pid": os.getpid(), "run_id": "late-record", "since": "2026"}))
    handle.flush()
    sys.stdin.read()
"""


def _locked(database: Path, pause: float, then: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THEN_NAME, str(database), str(pause), then],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_refusal_in_the_instant_before_the_holder_wrote_its_record_still_names_it(
    tmp_path: Path,
) -> None:
    """The CI flake: two syncs started together; the second read the record before it existed."""
    database = tmp_path / "warehouse.duckdb"
    holder = _locked(database, 0.3, "name")
    try:
        with (
            pytest.raises(WarehouseBusy) as refused,
            delivery_lock(str(database), "second", wait=0),
        ):
            pytest.fail("two deliverers held the lock")
        assert f"pid {holder.pid}" in str(refused.value) and "late-record" in str(refused.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(SYNC_TIMEOUT)


def test_a_lock_let_go_while_its_refusal_was_being_written_is_taken_instead(
    tmp_path: Path,
) -> None:
    database = tmp_path / "warehouse.duckdb"
    holder = _locked(database, 0.3, "exit")  # holds with no record, then lets go
    with delivery_lock(str(database), "second", wait=0):
        assert read_holder(str(database))["run_id"] == "second"
    holder.wait(SYNC_TIMEOUT)


def test_a_dagster_delivery_step_beside_a_running_sync_fails_naming_it(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.prepare()
    monkeypatch.setenv("HULL_PLANHAT_LOCK_WAIT", "0")
    with _held(stack.warehouse) as holder:
        result = stack.run("planhat_delivery")
    assert not result.success
    failures = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
    assert any(f"pid {holder.pid}" in m and "holder-run-1" in m for m in failures)
    assert stack.planhat.write_count() == 0
    assert stack.run("planhat_delivery").success  # free again: it delivers
    assert stack.planhat.write_count() > 0
