"""An enduser deleted in Planhat, through the jobs a user runs: ``planhat_fetch`` twice, each
followed by ``hull_sync``. The first snapshot without it changes nothing on its profile (a
listing can miss a record); the second is not ``source_unchanged`` (so the downstream sensor
and ``sync`` start Hull for it) and Hull detaches the profile's ``planhat/`` group."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from hull_planhat_pipelines_tests.assets.test_outgoing_assets import Stack, _started


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with _started(tmp_path) as started:
        yield started


def _snapshot_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["planhat", "enduser_snapshots"])
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_an_enduser_deleted_in_planhat_detaches_after_two_snapshots(stack: Stack) -> None:
    stack.prepare()
    rows = stack.query(
        "select u.hull_id, a from hull.users u, unnest(u.anonymous_ids) t(a)"
        " where a like 'planhat:%' and len(u.anonymous_ids) = 1"
        " and json_exists(u.attributes, '$.\"planhat/first_name\"') order by u.hull_id limit 1"
    )
    assert rows, "no profile holding one Planhat enduser"
    hull_id, anonymous = rows[0]
    before = stack.query("select attributes from hull.users where hull_id = ?", [hull_id])
    stack.planhat.store.delete("endusers", anonymous.split(":", 1)[1])

    first = stack.run("planhat_fetch")
    assert first.success and _snapshot_metadata(first)["source_unchanged"] is False
    assert stack.run("hull_sync").success
    assert stack.query("select attributes from hull.users where hull_id = ?", [hull_id]) == before

    second = stack.run("planhat_fetch")
    assert second.success
    metadata = _snapshot_metadata(second)
    assert metadata["source_unchanged"] is False and metadata["changed_records"] == 1
    assert stack.run("hull_sync").success
    [(text, ids)] = stack.query(
        "select attributes, anonymous_ids from hull.users where hull_id = ?", [hull_id]
    )
    planhat = {k for k in json.loads(text) if k.startswith("planhat/")}
    assert planhat == {"planhat/deleted_at"}
    assert anonymous in ids
    [(event, object_type)] = stack.query(
        "select event, object_type from ops.sync_log where event like 'incoming.%.deleted'"
    )
    assert (event, object_type) == ("incoming.user.deleted", "planhat_enduser")
