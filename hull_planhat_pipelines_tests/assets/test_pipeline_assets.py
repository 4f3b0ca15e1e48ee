"""The Dagster layer end to end against the sandboxes: partitions, backfills, checks, sensor."""

import datetime as dt
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import requests
import yaml

from hull_planhat_pipelines import orchestration
from hull_planhat_pipelines.assets import copper as copper_assets
from hull_planhat_pipelines.clients.http import ApiAuthError, ApiError, ApiResponseError
from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.orchestration import (
    SENSOR_LOG_WAITS,
    copper_fetch_tags,
    copper_partition_key,
    day_start,
    log_sensor_error,
    range_tags,
)
from hull_planhat_pipelines.policies import retry_can_help
from hull_planhat_pipelines.resources import CopperResource
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.sandbox.copper_seed import PLANHAT_TEAM_SIZE, planhat_user_ids
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.settings import default_config_path, load_settings
from hull_planhat_pipelines.sync.copper.schema import COPPER_OBJECTS
from hull_planhat_pipelines_tests.materialize import asset_metadata, materialize, run_job

HORIZON = 15
"""Activities are fetched up to ``HORIZON`` days ahead."""


class Pipeline:
    def __init__(
        self, copper: CopperSandbox, planhat: PlanhatSandbox, warehouse: Path, today: dt.date
    ) -> None:
        self.copper = copper
        self.planhat = planhat
        self.warehouse = warehouse
        self.instance = dg.DagsterInstance.ephemeral()
        self.today = today
        """The UTC day the test started: what the pipeline's partitions and windows count from."""
        self.start = today - dt.timedelta(days=400)
        """A partition range over two years at least (partitions are UTC years): a range run
        records one materialization per partition."""
        self.last = today + dt.timedelta(days=HORIZON)
        """The last Copper partition: activities are fetched up to ``HORIZON`` days ahead."""

    def defs(self) -> dg.Definitions:
        return build_definitions(load_settings())

    def run(self, job: str, **kw) -> dg.ExecuteInProcessResult:
        return run_job(job, instance=self.instance, **kw)

    def materialize(self, selection: list[dg.AssetKey], **kw: Any) -> dg.ExecuteInProcessResult:
        return materialize(selection, instance=self.instance, **kw)

    def full_copper(self, last: dt.date | None = None) -> dg.ExecuteInProcessResult:
        last = self.today if last is None else last
        return self.run(
            "copper_sync",
            tags=range_tags(copper_partition_key(self.start), copper_partition_key(last)),
        )

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copper_sandbox_factory, planhat_sandbox_factory
) -> Iterator[Pipeline]:
    copper = copper_sandbox_factory(seed=0, scale=0.05)
    planhat = planhat_sandbox_factory(
        seed=0, scale=0.05, seed_user_ids=planhat_user_ids(0, PLANHAT_TEAM_SIZE)
    )
    warehouse = tmp_path / "warehouse.duckdb"
    pipeline = Pipeline(copper, planhat, warehouse, dt.datetime.now(dt.UTC).date())
    config = yaml.safe_load(default_config_path().read_text())
    config["copper"]["start_date"] = pipeline.start.isoformat()
    config["copper"]["activity_horizon_days"] = HORIZON
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        "HULL_PLANHAT_CONFIG": str(tmp_path / "config.yaml"),
        "COPPER_API_URL": copper.base_url,
        "COPPER_API_KEY": copper.api_key,
        "COPPER_USER_EMAIL": copper.user_email,
        "HULL_PLANHAT_WAREHOUSE": str(warehouse),
        **planhat.env(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield pipeline


def _in_window(
    records: list[dict], field: str, first: dt.date, last: dt.date, start: dt.date
) -> set[int]:
    """Ids whose date falls in [first, last]; the first partition (from ``start``) also holds
    everything older."""
    found = set()
    for record in records:
        day = dt.datetime.fromtimestamp(record[field], dt.UTC).date()
        if (day <= last and day >= first) or (first == start and day < start):
            found.add(record["id"])
    return found


def _years(first: dt.date, last: dt.date) -> list[str]:
    return [str(year) for year in range(first.year, last.year + 1)]


def _year_end(day: dt.date) -> dt.date:
    return dt.date(day.year, 12, 31)


def test_a_backfill_over_every_partition_is_one_run_that_fetches_everything(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[str] = []
    write = copper_assets.write_copper_table

    def counted(path: str, table: str, *args: Any, **kw: Any) -> dict:
        writes.append(table)
        return write(path, table, *args, **kw)

    monkeypatch.setattr(copper_assets, "write_copper_table", counted)
    result = pipeline.full_copper()
    assert result.success
    assert len(pipeline.instance.get_runs()) == 1
    # one write per table for the whole range, however many partitions it covers
    assert sorted(writes) == sorted(f"copper.{n}" for n in copper_assets.COPPER_OBJECTS)
    # the run reaches the end of today's year, but never past the activity horizon
    today = pipeline.today
    last = min(_year_end(today), today + dt.timedelta(days=HORIZON))
    for name, field in [("leads", "date_modified"), ("activities", "activity_date")]:
        expected = _in_window(
            pipeline.copper.records(name), field, pipeline.start, last, pipeline.start
        )
        if name == "activities":  # user activity types only (events are chosen downstream)
            user_types = {t["id"] for t in pipeline.copper.metadata.activity_types["user"]}
            expected = {
                r["id"]
                for r in pipeline.copper.records(name)
                if r["id"] in expected
                and r["type"]["id"] in user_types
                and r["type"]["category"] == "user"
            }
        rows = pipeline.query(f"select id from copper.{name}")
        assert sorted(r[0] for r in rows) == sorted(expected)
    metadata = asset_metadata(result, "copper/leads")
    assert metadata["run_rows"] == pipeline.copper.count("leads")
    assert metadata["run_requests"] >= metadata["run_pages_fetched"] >= 1
    # Each partition counts its own year's rows, not the run's totals.
    per_year = dict(
        pipeline.query(
            "select strftime(partition_date, '%Y'), count(*) from copper.leads group by 1"
        )
    )
    partitions = [
        e.step_materialization_data.materialization
        for e in result.get_asset_materialization_events()
        if e.step_materialization_data.materialization.asset_key == dg.AssetKey(["copper", "leads"])
    ]
    assert [m.partition for m in partitions] == _years(pipeline.start, pipeline.today)
    assert len(partitions) >= 2
    for materialization in partitions:
        rows = materialization.metadata["rows"].value
        assert rows == per_year.get(materialization.partition, 0), materialization.partition
        assert materialization.metadata["dagster/partition_row_count"].value == rows
        assert materialization.metadata["rows_written"].value == rows  # a range replaces
        assert "dagster/column_schema" in materialization.metadata
        if rows:
            preview = materialization.metadata["preview"].value
            assert preview.splitlines()[0].split("|")[1].strip() == "id"
            lines = preview.splitlines()[2:]  # below the header and its rule
            assert len(lines) == min(rows, 10)
            year = materialization.partition
            assert all(line.split("|")[-2].strip()[:4] == year for line in lines)
    assert sum(m.metadata["rows"].value for m in partitions) == pipeline.copper.count("leads")
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks), [
        (c.asset_key, c.check_name) for c in checks if not c.passed
    ]


def test_rerunning_a_partition_replaces_it_and_the_current_view_keeps_the_newest(
    pipeline: Pipeline,
) -> None:
    assert pipeline.full_copper().success
    before = pipeline.query("select count(*) from copper.people")[0][0]
    lead = pipeline.copper.records("people")[0]
    pipeline.copper.touch("people", [lead["id"]])
    people = [dg.AssetKey(["copper", "people"])]
    today = pipeline.materialize(people, partition_key=copper_partition_key(pipeline.today))
    assert today.success
    stored = pipeline.query("select id, partition_date, record from copper.people order by id")
    again = pipeline.materialize(people, partition_key=copper_partition_key(pipeline.today))
    assert again.success
    # re-running the partition is idempotent: the same rows, once each
    assert pipeline.query("select id, partition_date, record from copper.people order by id") == (
        stored
    )
    rows = pipeline.query(
        f"select partition_date, count(*) from copper.people where id = {lead['id']} group by 1"
    )
    assert all(n == 1 for _, n in rows)  # at most one row per partition: no duplicates
    assert pipeline.query("select count(*) from copper.people")[0][0] in (before, before + 1)
    assert pipeline.query(f"select count(*) from copper.people where id = {lead['id']}") == [(1,)]
    newest = pipeline.query(
        f"select cast(partition_date as date) from copper_current.people where id = {lead['id']}"
    )
    assert newest == [(pipeline.today,)]


def test_a_full_refresh_drops_records_deleted_in_copper(pipeline: Pipeline) -> None:
    assert pipeline.full_copper().success
    gone = pipeline.copper.records("opportunities")[0]["id"]
    pipeline.copper.delete_records("opportunities", [gone])
    assert pipeline.full_copper().success
    assert pipeline.query(f"select count(*) from copper.opportunities where id = {gone}") == [(0,)]


def test_wrong_credentials_stop_the_run_and_log_unauthorized_without_the_key(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "wrong-key-1f9a7c3e5d"
    monkeypatch.setenv("COPPER_API_KEY", secret)
    result = pipeline.run("copper_sync", partition_key=copper_partition_key(pipeline.today))
    assert not result.success
    messages = [e.message or "" for e in pipeline.instance.all_logs(result.run_id)] + [
        json.dumps(str(e.dagster_event)) for e in pipeline.instance.all_logs(result.run_id)
    ]
    assert any("incoming.job.error" in m and "Unauthorized" in m for m in messages)
    assert not any(secret in m for m in messages)
    rows = pipeline.query("select event, reason from ops.sync_log")
    assert ("incoming.job.error", "Unauthorized") in rows
    attempts = pipeline.copper.server.recorded()
    assert all(r.status == 401 for r in attempts) and len(attempts) <= 5  # once per asset


def test_a_launch_without_a_partition_fails_at_once_and_says_what_to_pass(
    pipeline: Pipeline,
) -> None:
    """Reproduced over GraphQL: a ``copper_sync`` launched with no partition key failed each
    step inside Dagster's own partition lookup, then retried it three times for minutes."""
    started = time.monotonic()
    result = pipeline.run("copper_sync")
    assert not result.success
    assert _step_retries(pipeline, result.run_id) == []
    assert time.monotonic() - started < 20  # three retries wait 2 minutes at least
    events = pipeline.instance.all_logs(result.run_id)
    failures = [
        e.dagster_event for e in events if e.dagster_event and e.dagster_event.is_step_failure
    ]
    assert failures
    for failure in failures:
        message = failure.step_failure_data.error.message
        assert "partitioned by UTC year" in message and "partition range" in message
    assert pipeline.copper.server.recorded() == []  # nothing was asked of Copper
    assert not pipeline.warehouse.exists()  # nor written


@pytest.mark.parametrize(
    ("exc", "again"),
    [
        (ApiError("Copper", "reset", ambiguous=True), True),  # no answer: an outage
        (ApiResponseError("Copper", "malformed JSON", 200), True),  # often a proxy's page
        (ApiError("Copper", "answered 503", 503), True),
        (ApiError("Copper", "answered 429", 429), True),
        (ApiError("Copper", "answered 408", 408), True),
        (ApiError("Copper", "answered 400", 400), False),
        (ApiError("Planhat", "answered 404", 404), False),
        (ApiError("Copper", "answered 422", 422), False),
        (ApiAuthError("Planhat", "Unauthorized", 401), False),
    ],
)
def test_only_failures_a_later_try_may_fix_are_retried(exc: ApiError, again: bool) -> None:
    assert retry_can_help(exc) is again


def _step_retries(pipeline: Pipeline, run_id: str) -> list[str]:
    events = pipeline.instance.all_logs(run_id)
    return [
        e.dagster_event.step_key or ""
        for e in events
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"
    ]


def test_a_refused_copper_search_fails_its_step_at_once_and_is_logged(
    pipeline: Pipeline,
) -> None:
    """A 4xx that is not a "not now" gets the same answer every time: no step retry."""
    key = pipeline.copper.api_key
    refusal = json.dumps({"success": False, "status": 400, "message": f"bad search for {key}"})
    pipeline.copper.server.faults.add(
        status=400, path="^/people/search", times=10**6, raw_body=refusal
    )
    started = time.monotonic()
    result = pipeline.run("copper_sync", partition_key=copper_partition_key(pipeline.today))
    assert not result.success
    assert _step_retries(pipeline, result.run_id) == []
    assert time.monotonic() - started < 20  # three retries wait 2 minutes at least
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    assert failed == {"copper__people"}  # the other objects were fetched
    rows = pipeline.query(
        "select object_type, reason from ops.sync_log where event = 'incoming.job.error'"
    )
    assert [object_type for object_type, _ in rows] == ["people"]
    assert "answered 400" in rows[0][1] and "bad search for" in rows[0][1]
    assert key not in rows[0][1]  # the answer named the key: the reason does not
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert key not in failure.step_failure_data.error.message
    searches = pipeline.copper.server.recorded()
    assert sum(r.path.startswith("/people/search") for r in searches) == 1  # asked once


def test_a_refused_planhat_list_fails_the_snapshot_at_once_and_is_logged(
    pipeline: Pipeline,
) -> None:
    """Before, only refused credentials were logged: any other failure of a Planhat fetch left
    no ``incoming.job.error`` behind, and a 404 was retried for minutes."""
    token = pipeline.planhat.api_token
    pipeline.planhat.rest.faults.add(
        status=404,
        path="^/endusers$",
        method="GET",
        times=10**6,
        raw_body=json.dumps({"error": f"no such route for {token}"}),
    )
    started = time.monotonic()
    result = pipeline.run("planhat_fetch")
    assert not result.success
    assert _step_retries(pipeline, result.run_id) == []
    assert time.monotonic() - started < 20  # three retries wait 2 minutes at least
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    assert failed == {"planhat__enduser_snapshots"}
    rows = pipeline.query(
        "select asset, object_type, reason from ops.sync_log where event = 'incoming.job.error'"
    )
    assert len(rows) == 1
    asset, object_type, reason = rows[0]
    assert (asset, object_type) == ("planhat/enduser_snapshots", "endusers")
    assert "answered 404" in reason and "no such route for" in reason
    assert token not in reason  # the answer named the token: the reason does not


def _sensor_tick(pipeline: Pipeline, cursor: str | None, api_key: str | None = None) -> Any:
    defs = pipeline.defs()
    sensor = defs.resolve_sensor_def("copper_incremental_sensor")
    copper = CopperResource(
        api_url=pipeline.copper.base_url,
        api_key=api_key or pipeline.copper.api_key,
        user_email=pipeline.copper.user_email,
    )
    context = dg.build_sensor_context(
        cursor=cursor, resources={"copper": copper}, definitions=defs, instance=pipeline.instance
    )
    return sensor(context)


def test_the_sensor_requests_only_changed_days_and_a_repeated_tick_is_harmless(
    pipeline: Pipeline,
) -> None:
    # Filled tables: the poll proper (over empty ones a first start asks for everything
    # until a full fetch succeeds).
    assert pipeline.full_copper(pipeline.last).success
    pipeline.copper.server.clear_requests()
    first = _sensor_tick(pipeline, None)
    keys = [r.run_key for r in first.run_requests]
    assert keys and len(set(keys)) == len(keys)
    assert len(pipeline.copper.server.recorded()) <= 8  # one cheap question per object
    assert all(
        json.loads(r.body or "{}").get("page_size", 1) == 1
        for r in []  # bodies are dicts here; checked below
    )
    assert all(r.body.get("page_size") == 1 for r in pipeline.copper.server.recorded())
    second = _sensor_tick(pipeline, first.cursor)
    assert [
        r for r in second.run_requests if "modified" in r.tags.get("hull_planhat/trigger", "")
    ] == []
    pipeline.copper.touch("companies", [pipeline.copper.records("companies")[0]["id"]])
    third = _sensor_tick(pipeline, second.cursor)
    changed = [
        r for r in third.run_requests if r.tags["hull_planhat/trigger"] == "modified records"
    ]
    assert len(changed) == 1
    assert changed[0].asset_selection == [dg.AssetKey(["copper", "companies"])]
    assert changed[0].tags["dagster/asset_partition_range_end"] == copper_partition_key(
        pipeline.today
    )
    # only what changed since the previous newest change is fetched, not the whole year
    since = json.loads(changed[0].tags["hull_planhat/copper_since"])
    assert since == {"companies": json.loads(second.cursor)["newest"]["companies"]}
    assert (
        json.loads(third.cursor)["newest"]["companies"]
        > json.loads(second.cursor)["newest"]["companies"]
    )


def test_an_incremental_poll_upserts_only_the_changed_records_and_keeps_the_partition(
    pipeline: Pipeline,
) -> None:
    assert pipeline.full_copper(pipeline.last).success
    cursor = _sensor_tick(pipeline, None).cursor
    stored = dict(pipeline.query("select id, _fetched_at from copper.people"))
    in_year = pipeline.query(
        "select count(*) from copper.people where year(partition_date) = "
        f"{copper_partition_key(pipeline.today)}"
    )[0][0]
    person = pipeline.copper.records("people")[0]["id"]
    _control(pipeline, "PATCH", f"people/{person}", {"title": "Head of Upserts"})
    tick = _sensor_tick(pipeline, cursor)
    changed = [r for r in tick.run_requests if r.tags["hull_planhat/trigger"] == "modified records"]
    assert [r.asset_selection for r in changed] == [[dg.AssetKey(["copper", "people"])]]
    assert "hull_planhat/copper_since" in changed[0].tags
    before = len(pipeline.copper.server.recorded())
    result = pipeline.materialize(changed[0].asset_selection, tags=changed[0].tags)
    assert result.success
    # a search of the changed records only: one short page (plus the metadata), not the year
    assert len(pipeline.copper.server.recorded()) - before <= 4
    after = dict(pipeline.query("select id, _fetched_at from copper.people"))
    assert set(after) == set(stored)  # nothing dropped, one row per id
    rewritten = {i for i in after if after[i] != stored[i]}
    assert person in rewritten and len(rewritten) <= 2  # the edit (and a same-second peer)
    title = pipeline.query(f"select json_extract_string(record, '$.title') from copper.people "
                           f"where id = {person}")  # fmt: skip
    assert title == [("Head of Upserts",)]
    assert pipeline.query(
        "select count(*) from copper.people where year(partition_date) = "
        f"{copper_partition_key(pipeline.today)}"
    )[0][0] in (in_year, in_year + 1)
    partitions = [
        e.step_materialization_data.materialization
        for e in result.get_asset_materialization_events()
    ]
    assert [m.partition for m in partitions] == [copper_partition_key(pipeline.today)]
    metadata = partitions[0].metadata
    assert metadata["rows_written"].value == len(rewritten)
    assert metadata["rows"].value == metadata["dagster/partition_row_count"].value >= in_year
    assert "upsert" in metadata["write"].value
    # the same poll run again writes the same rows: per-record idempotency
    assert pipeline.materialize(changed[0].asset_selection, tags=changed[0].tags).success
    assert pipeline.query("select count(*) from copper.people")[0][0] == len(after)


def test_planhat_snapshots_keep_their_history_and_have_no_partitions(pipeline: Pipeline) -> None:
    """Planhat keeps no history, so no snapshot asset offers a partition that could never be
    filled: each fetch appends a full snapshot and the latest view shows the newest one."""
    job = pipeline.defs().resolve_job_def("planhat_fetch")
    assert job.partitions_def is None
    result = pipeline.run("planhat_fetch")
    assert result.success
    held = len(pipeline.planhat.companies())
    assert pipeline.query("select count(*) from planhat.company_snapshots")[0][0] == held
    assert pipeline.query("select count(*) from planhat_current.companies")[0][0] == held
    owners = pipeline.query(
        "select count(*) from planhat_current.companies where owner is not null"
    )
    assert owners[0][0] > 0
    assert pipeline.query("select count(*) from planhat.team_members")[0][0] == len(
        pipeline.planhat.users()
    )
    metadata = asset_metadata(result, "planhat/company_snapshots")
    assert metadata["requests"] >= 1 and metadata["snapshots_kept"] == 1
    assert pipeline.run("planhat_fetch").success
    snapshots = pipeline.query(
        "select snapshot_at, count(*) from planhat.company_snapshots group by 1 order by 1"
    )
    assert [n for _, n in snapshots] == [held, held]
    newest = pipeline.query("select distinct snapshot_at from planhat_current.companies")
    assert newest == [(snapshots[-1][0],)]
    assert pipeline.query("select count(*) from planhat_current.endusers")[0][0] == len(
        pipeline.planhat.endusers()
    )


# -- a CRM that changes: deletions, conversions, connect fields, planned activities, a bad key ----
def test_a_catch_up_resumes_each_object_at_its_newest_stored_change(pipeline: Pipeline) -> None:
    """The command line's catch-up has no sensor cursor: each object sorted by modification
    resumes at the newest ``date_modified`` its table holds, that second included; activities
    over the re-scan window before their newest day. An edit saved in that very second, and
    one saved later, are both fetched; nothing older is asked again."""
    assert pipeline.full_copper(pipeline.last).success
    settings = load_settings()
    sorted_objects = [n for n, o in COPPER_OBJECTS.items() if o.sort_by is not None]
    newest = {
        name: pipeline.query(f"select epoch(max(date_modified))::bigint from copper.{name}")[0][0]
        for name in sorted_objects
    }
    tags = copper_fetch_tags(settings, pipeline.today, full=False)
    since = json.loads(tags["hull_planhat/copper_since"])
    assert {n: since[n] for n in sorted_objects} == newest
    (last_activity_day,) = pipeline.query("select max(partition_date) from copper.activities")[0]
    rescan = min(last_activity_day, pipeline.today) - dt.timedelta(
        days=settings.copper.activity_rescan_days
    )
    assert since["activities"] == day_start(max(rescan, pipeline.start))

    people = [r["id"] for r in pipeline.copper.records("people")[:2]]
    pipeline.copper.edit("people", people[0], {"title": "Same Second"}, at=newest["people"])
    pipeline.copper.edit("people", people[1], {"title": "Later"}, at=newest["people"] + 60)
    stored = pipeline.query("select count(*) from copper.people")[0][0]
    before = len(pipeline.copper.server.recorded())
    assert pipeline.run("copper_sync", tags=tags).success
    searches = Counter(r.path for r in pipeline.copper.server.recorded()[before:])
    # one short page per sorted object (what its newest second holds, and the two edits)
    assert all(searches[f"/{name}/search"] == 1 for name in sorted_objects if name != "people")
    titles = dict(
        pipeline.query(
            "select id, json_extract_string(record, '$.title') from copper.people "
            f"where id in ({people[0]}, {people[1]})"
        )
    )
    assert titles == {people[0]: "Same Second", people[1]: "Later"}
    assert pipeline.query("select count(*) from copper.people")[0][0] == stored


def _control(pipeline: Pipeline, method: str, path: str, body: dict | None = None) -> dict:
    """A change made in Copper, over HTTP, through the sandbox's control surface."""
    response = requests.request(
        method, f"{pipeline.copper.base_url}/_sandbox/copper/{path}", json=body, timeout=10
    )
    assert response.status_code < 300, response.text
    return response.json()


def _user_activity(pipeline: Pipeline) -> dict:
    user_types = {t["id"] for t in pipeline.copper.metadata.activity_types["user"]}
    first = dt.datetime.combine(pipeline.start, dt.time(), dt.UTC).timestamp()
    return next(
        a
        for a in pipeline.copper.records("activities")
        if a["type"]["category"] == "user"
        and a["type"]["id"] in user_types
        and a["activity_date"] >= first
    )


@pytest.mark.parametrize("name", list(COPPER_OBJECTS))
def test_a_full_refresh_leaves_records_deleted_in_copper_out_of_every_partition(
    pipeline: Pipeline, name: str
) -> None:
    assert pipeline.full_copper(pipeline.last).success
    if name == "activities":
        gone = _user_activity(pipeline)["id"]
    else:
        gone = pipeline.copper.records(name)[-1]["id"]
    assert pipeline.query(f"select count(*) from copper_current.{name} where id = {gone}") == [(1,)]
    _control(pipeline, "DELETE", f"{name}/{gone}")
    assert pipeline.full_copper(pipeline.last).success
    assert pipeline.query(f"select count(*) from copper.{name} where id = {gone}") == [(0,)]
    assert pipeline.query(f"select count(*) from copper_current.{name} where id = {gone}") == [(0,)]
    kept = pipeline.query(f"select count(*) from copper_current.{name}")[0][0]
    assert kept > 0


def test_a_converted_lead_is_kept_with_its_conversion(pipeline: Pipeline) -> None:
    assert pipeline.full_copper().success
    lead = next(r for r in pipeline.copper.records("leads") if r["converted_contact_id"] is None)
    person = pipeline.copper.records("people")[0]
    _control(pipeline, "POST", f"leads/{lead['id']}/convert", {"person_id": person["id"]})
    leads = [dg.AssetKey(["copper", "leads"])]
    assert pipeline.materialize(leads, partition_key=copper_partition_key(pipeline.today)).success
    rows = pipeline.query(
        "select converted_contact_id, epoch(converted_at), record from copper_current.leads "
        f"where id = {lead['id']}"
    )
    assert len(rows) == 1
    contact, at, record = rows[0]
    assert contact == person["id"] and at == json.loads(record)["converted_at"] is not None
    seeded = pipeline.copper.edge_cases["converted_lead"]
    assert pipeline.query(
        f"select converted_contact_id from copper_current.leads where id = {seeded['lead_id']}"
    ) == [(seeded["person_id"],)]


def test_connect_fields_are_resolved_to_names_by_the_asset(pipeline: Pipeline) -> None:
    assert pipeline.full_copper().success
    names = {c["id"]: c["name"] for c in pipeline.copper.records("companies")}
    rows = pipeline.query("select fields from copper.opportunities")
    resolved = [
        json.loads(f)["custom:Partner Company"]
        for (f,) in rows
        if (json.loads(f).get("custom:Partner Company") or {}).get("ids")
    ]
    assert resolved, "the seed links some opportunities to partner companies"
    for value in resolved:
        known = [i for i in value["ids"] if i in names]
        assert known and value["names"] == [names[i] for i in known]


def test_activities_planned_ahead_are_fetched_up_to_the_horizon(pipeline: Pipeline) -> None:
    template = _user_activity(pipeline)
    planned = {}
    for days in (3, HORIZON, HORIZON + 2):
        moment = dt.datetime.combine(pipeline.today + dt.timedelta(days=days), dt.time(10), dt.UTC)
        made = _control(
            pipeline,
            "POST",
            "activities",
            {
                "parent": template["parent"],
                "type": template["type"],
                "details": f"Meeting in {days} days",
                "activity_date": int(moment.timestamp()),
                "date_modified": int(moment.timestamp()),
            },
        )
        planned[days] = made["id"]
    assert pipeline.full_copper(pipeline.last).success
    rows = dict(pipeline.query("select id, cast(partition_date as date) from copper.activities"))
    assert rows[planned[3]] == pipeline.today + dt.timedelta(days=3)
    assert rows[planned[HORIZON]] == pipeline.last
    assert planned[HORIZON + 2] not in rows  # beyond the horizon
    tick = _sensor_tick(pipeline, None)
    rescan = [r for r in tick.run_requests if r.tags["hull_planhat/trigger"].startswith("trailing")]
    assert rescan and rescan[0].tags["dagster/asset_partition_range_end"] == copper_partition_key(
        pipeline.last
    )
    until = dt.datetime.fromtimestamp(int(rescan[0].tags["hull_planhat/copper_until"]), dt.UTC)
    assert until.date() == pipeline.last


def test_a_401_at_the_sensor_is_logged_skipped_and_recovered_by_itself(
    pipeline: Pipeline,
) -> None:
    wrong = "wrong-key-7c1d2e"
    skipped = _sensor_tick(pipeline, None, api_key=wrong)
    assert isinstance(skipped, dg.SkipReason)
    assert "Unauthorized" in (skipped.skip_message or "") and wrong not in skipped.skip_message
    rows = pipeline.query("select event, reason, asset from ops.sync_log")
    assert ("incoming.job.error", "Unauthorized", "copper_incremental_sensor") in rows
    fixed = _sensor_tick(pipeline, None)  # the same (absent) cursor: nothing was advanced
    assert isinstance(fixed, dg.SensorResult) and fixed.run_requests


def test_a_busy_warehouse_never_fails_the_sensor_tick(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[object] = []

    def busy(frame: object) -> None:
        attempts.append(frame)
        raise duckdb.IOException("Could not set lock on file: Conflicting lock is held")

    waits: list[float] = []
    assert not log_sensor_error(
        "Unauthorized", sensor="copper_incremental_sensor", tick="t", sleeper=waits.append,
        writer=busy,
    )  # fmt: skip
    assert len(attempts) == len(SENSOR_LOG_WAITS) + 1 and waits == list(SENSOR_LOG_WAITS)
    waits_before = len(attempts)
    monkeypatch.setattr(orchestration, "append_sync_log", lambda frame, **kw: busy(frame))
    monkeypatch.setattr(orchestration, "SENSOR_LOG_WAITS", ())
    skipped = _sensor_tick(pipeline, None, api_key="wrong")
    assert isinstance(skipped, dg.SkipReason) and "Unauthorized" in (skipped.skip_message or "")
    assert len(attempts) == waits_before + 1  # the sensor tried its row, and went on


def _current(path: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return {
            name: conn.execute(
                f"select id, record from copper_current.{name} order by id"
            ).fetchall()
            for name in COPPER_OBJECTS
        }


def test_after_changes_a_full_refresh_and_one_poll_equal_a_fetch_from_scratch(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edits, deletions and conversions made in Copper over HTTP: a full refresh, more changes
    and one incremental poll leave copper_current.* equal to a fetch of the final state."""
    assert pipeline.full_copper(pipeline.last).success
    cursor = _sensor_tick(pipeline, None).cursor
    people = pipeline.copper.records("people")
    leads = [r for r in pipeline.copper.records("leads") if r["converted_contact_id"] is None]
    template = _user_activity(pipeline)
    # changes seen by the full refresh: deletions of every kind, an edit, a conversion
    for name in ("leads", "people", "companies", "opportunities"):
        _control(pipeline, "DELETE", f"{name}/{pipeline.copper.records(name)[-1]['id']}")
    _control(pipeline, "DELETE", f"activities/{template['id']}")
    _control(pipeline, "PATCH", f"people/{people[1]['id']}", {"title": "Head of Tests"})
    _control(pipeline, "POST", f"leads/{leads[0]['id']}/convert", {"person_id": people[2]["id"]})
    assert pipeline.full_copper(pipeline.last).success
    # changes only the poll sees: edits, a conversion into a new person, new records
    _control(pipeline, "PATCH", f"companies/{pipeline.copper.records('companies')[0]['id']}",
             {"name": "Renamed Inc"})  # fmt: skip
    _control(pipeline, "POST", f"leads/{leads[1]['id']}/convert", {})
    _control(pipeline, "POST", "companies", {"name": "Brand New", "email_domain": "new.test"})
    _control(pipeline, "POST", "activities",
             {"parent": template["parent"], "type": template["type"], "details": "Just now"})  # fmt: skip
    tick = _sensor_tick(pipeline, cursor)
    assert tick.run_requests
    for request in tick.run_requests:
        result = pipeline.run(
            "copper_sync", tags=request.tags, asset_selection=request.asset_selection
        )
        assert result.success
    polled = _current(pipeline.warehouse)
    scratch = tmp_path / "scratch.duckdb"
    monkeypatch.setenv("HULL_PLANHAT_WAREHOUSE", str(scratch))
    assert pipeline.full_copper(pipeline.last).success
    fresh = _current(scratch)
    for name, rows in fresh.items():
        assert rows, name
        assert polled[name] == rows, name


def test_a_warehouse_locked_by_another_process_costs_the_sensor_a_second_at_most(
    pipeline: Pipeline,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(pipeline.warehouse)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        waits: list[float] = []
        stored = log_sensor_error(
            "Unauthorized", sensor="copper_incremental_sensor", tick="t", sleeper=waits.append
        )
        assert not stored and waits == list(SENSOR_LOG_WAITS)  # bounded: about a second
    finally:
        holder.kill()
        holder.wait()
    assert log_sensor_error("Unauthorized", sensor="copper_incremental_sensor", tick="t2")
    assert ("incoming.job.error", "t2") in pipeline.query("select event, run_id from ops.sync_log")


LOCK_HOLDER = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1])
conn.execute("create table if not exists _held (x int)")
print("locked", flush=True)
time.sleep(120)
"""
