"""A command-line sync after a clean one asks Copper what changed before it starts a run.

The cursor the sensor keeps in Dagster, the command line keeps in the warehouse
(``ops.poll_cursors``): taken when a sync starts, saved again only when the whole cycle went
through, so an interrupted, failed or dry-run sync leaves the next one to fetch from the
warehouse's resume points and carry the rest of the chain (the SIGKILL drills of
``test_delivery_faults`` run through that path).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hull_planhat_pipelines.cli import SyncSummary, run_sync
from hull_planhat_pipelines.clients.copper import COPPER_OBJECTS
from hull_planhat_pipelines_tests.assets.test_outgoing_assets import Stack, _started

COPPER_STEPS = {f"copper/{name}" for name in COPPER_OBJECTS}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with _started(tmp_path) as started:
        yield started


def _copper_steps(summary: SyncSummary) -> set[str]:
    return {s.step for s in summary.steps if s.step in COPPER_STEPS}


def _cursors(stack: Stack) -> int:
    if not stack.has_table("ops", "poll_cursors"):
        return 0
    return int(stack.query("select count(*) from ops.poll_cursors")[0][0])


def _past_this_second_and_the_next() -> None:
    """A poll fetches a change dated within a second of its previous one again (clocks may
    differ): leave that second behind so the next poll sees the source settled."""
    time.sleep(2 - time.time() % 1)


def test_a_sync_after_a_clean_one_runs_only_what_copper_says_changed(stack: Stack) -> None:
    stack.cycle()
    assert _cursors(stack) == 1
    _past_this_second_and_the_next()

    # Nothing changed: five one-record questions, no run, nothing written to Planhat.
    stack.copper.server.clear_requests()
    stack.planhat.rest.clear_requests()
    quiet = run_sync()
    assert quiet.exit_status == 0, quiet.table()
    assert _copper_steps(quiet) == set()
    (copper,) = [s for s in quiet.steps if s.step == "copper"]
    assert "nothing changed: no run" in copper.detail
    asked = stack.copper.server.recorded()
    assert len(asked) == len(COPPER_OBJECTS)
    assert all(r.body.get("page_size") == 1 for r in asked)
    assert stack.planhat.rest.recorded("PUT") == stack.planhat.rest.recorded("POST") == []

    # A person edited and a new activity: one run of those two objects, and both land.
    person = stack.copper.records("people")[0]
    stack.copper.edit("people", person["id"], {"title": "Head of Cheap Polls"})
    template = next(
        a
        for a in stack.copper.records("activities")
        if (a.get("type") or {}).get("category") == "user"
    )
    now = stack.copper.clock()
    activity = stack.copper.create(
        "activities",
        {
            **{k: v for k, v in template.items() if k != "id"},
            "details": "Logged after the last sync",
            "activity_date": now,
            "date_created": now,
            "date_modified": now,
        },
    )
    _past_this_second_and_the_next()
    changed = run_sync()
    assert changed.exit_status == 0, changed.table()
    assert _copper_steps(changed) == {"copper/people", "copper/activities"}
    assert stack.query(
        "select record->>'title' from copper.people where id = ?", [person["id"]]
    ) == [("Head of Cheap Polls",)]
    assert stack.query("select count(*) from copper.activities where id = ?", [activity["id"]]) == [
        (1,)
    ]
    profiles = "select count(*) from hull.users as u where cast(u as varchar) like ?"
    assert stack.query(profiles, ["%Head of Cheap Polls%"])[0][0] == 1  # it reached the profile

    # Settled again: the next poll starts no run.
    stack.copper.server.clear_requests()
    again = run_sync()
    assert again.exit_status == 0 and _copper_steps(again) == set(), again.table()
    assert len(stack.copper.server.recorded()) == len(COPPER_OBJECTS)


def test_a_sync_that_did_not_end_cleanly_leaves_the_next_one_to_fetch_as_before(
    stack: Stack,
) -> None:
    """A dry run (as a failed or killed sync) takes the cursor and saves none: the next sync
    fetches every object from the warehouse's resume points, whose run carries the chain, and
    saves a cursor again once it went through. A cursor saved under another configuration is
    not used."""
    stack.cycle()
    assert _cursors(stack) == 1
    _past_this_second_and_the_next()
    dry = run_sync(dry_run=True)
    assert dry.ok, dry.table()
    assert _cursors(stack) == 0

    after = run_sync()
    assert after.exit_status == 0, after.table()
    assert _copper_steps(after) == COPPER_STEPS
    assert _cursors(stack) == 1

    # Another configuration (a mapping, a segment, a destination...): its first sync fetches
    # as a first one does, so the change reaches the profiles and Planhat now.
    def edit(config: dict[str, Any]) -> None:
        config["copper"]["activity_rescan_minutes"] = 90

    stack.configure(edit)
    reconfigured = run_sync()
    assert reconfigured.exit_status == 0, reconfigured.table()
    assert _copper_steps(reconfigured) == COPPER_STEPS
    assert _cursors(stack) == 1

    # --full never plans from the cursor, and leaves a fresh one.
    full = run_sync(full=True)
    assert full.exit_status == 0, full.table()
    assert _copper_steps(full) == COPPER_STEPS
    assert _cursors(stack) == 1


def test_a_poll_copper_refuses_fails_the_sync_as_a_fetch_would_and_keeps_no_cursor(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Wrong credentials after a clean sync: the questions are refused, the sync falls back to
    the catch-up fetch, whose steps fail and log ``incoming.job.error`` (the key never shown),
    and no cursor is saved; with the key fixed, the next sync catches up and saves one."""
    stack.cycle()
    good = stack.env()["COPPER_API_KEY"]
    secret = "wrong-key-7d1e0c9b2a"
    monkeypatch.setenv("COPPER_API_KEY", secret)
    refused = run_sync()
    assert not refused.ok and refused.exit_status == 1
    assert _copper_steps(refused) == COPPER_STEPS
    assert not any(s.ok for s in refused.steps if s.step in COPPER_STEPS)
    assert _cursors(stack) == 0
    rows = stack.query("select event, reason from ops.sync_log where event = 'incoming.job.error'")
    assert ("incoming.job.error", "Unauthorized") in rows
    assert secret not in capsys.readouterr().err + refused.table()

    monkeypatch.setenv("COPPER_API_KEY", good)
    fixed = run_sync()
    assert fixed.exit_status == 0, fixed.table()
    assert _copper_steps(fixed) == COPPER_STEPS
    assert _cursors(stack) == 1
