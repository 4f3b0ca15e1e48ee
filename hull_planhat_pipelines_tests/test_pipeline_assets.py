"""The Dagster layer end to end against the sandboxes: partitions, backfills, checks, sensor."""

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.orchestration import range_tags
from hull_planhat_pipelines.resources import CopperResource
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.sandbox.copper_seed import PLANHAT_TEAM_SIZE, planhat_user_ids
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.settings import default_config_path, load_settings

TODAY = dt.datetime.now(dt.UTC).date()
START = TODAY - dt.timedelta(days=20)
"""A short partition range: a range run records one materialization per partition."""


class Pipeline:
    def __init__(self, copper: CopperSandbox, planhat: PlanhatSandbox, warehouse: Path) -> None:
        self.copper = copper
        self.planhat = planhat
        self.warehouse = warehouse
        self.instance = dg.DagsterInstance.ephemeral()

    def defs(self) -> dg.Definitions:
        return build_definitions(load_settings())

    def run(self, job: str, **kw) -> dg.ExecuteInProcessResult:
        return (
            self.defs()
            .resolve_job_def(job)
            .execute_in_process(instance=self.instance, raise_on_error=False, **kw)
        )

    def full_copper(self) -> dg.ExecuteInProcessResult:
        return self.run("copper_sync", tags=range_tags(START.isoformat(), TODAY.isoformat()))

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
    config = yaml.safe_load(default_config_path().read_text())
    config["copper"]["start_date"] = START.isoformat()
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
    yield Pipeline(copper, planhat, warehouse)


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == dg.AssetKey(key.split("/")):
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    raise AssertionError(f"{key} was not materialized")


def _in_window(records: list[dict], field: str, first: dt.date, last: dt.date) -> set[int]:
    """Ids whose date falls in [first, last]; the first partition also holds everything older."""
    found = set()
    for record in records:
        day = dt.datetime.fromtimestamp(record[field], dt.UTC).date()
        if (day <= last and day >= first) or (first == START and day < START):
            found.add(record["id"])
    return found


def test_a_backfill_over_every_partition_is_one_run_that_fetches_everything(
    pipeline: Pipeline,
) -> None:
    result = pipeline.full_copper()
    assert result.success
    assert len(pipeline.instance.get_runs()) == 1
    for name, field in [("leads", "date_modified"), ("activities", "activity_date")]:
        expected = _in_window(pipeline.copper.records(name), field, START, TODAY)
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
    metadata = _metadata(result, "copper/leads")
    assert metadata["rows"] == pipeline.copper.count("leads")
    assert metadata["requests"] >= metadata["pages_fetched"] >= 1
    assert metadata["preview"].splitlines()[0].split("|")[1].strip() == "id"
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
    today = pipeline.run("copper_sync", partition_key=TODAY.isoformat())
    assert today.success
    again = pipeline.run("copper_sync", partition_key=TODAY.isoformat())
    assert again.success
    rows = pipeline.query(
        f"select partition_date, count(*) from copper.people where id = {lead['id']} group by 1"
    )
    assert all(n == 1 for _, n in rows)  # at most one row per partition: no duplicates
    assert pipeline.query("select count(*) from copper.people")[0][0] in (before, before + 1)
    newest = pipeline.query(
        f"select cast(partition_date as date) from copper_current.people where id = {lead['id']}"
    )
    assert newest == [(TODAY,)]


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
    result = pipeline.run("copper_sync", partition_key=TODAY.isoformat())
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


def _sensor_tick(pipeline: Pipeline, cursor: str | None) -> dg.SensorResult:
    defs = pipeline.defs()
    sensor = defs.resolve_sensor_def("copper_incremental_sensor")
    copper = CopperResource(
        api_url=pipeline.copper.base_url,
        api_key=pipeline.copper.api_key,
        user_email=pipeline.copper.user_email,
    )
    context = dg.build_sensor_context(
        cursor=cursor, resources={"copper": copper}, definitions=defs, instance=pipeline.instance
    )
    return sensor(context)


def test_the_sensor_requests_only_changed_days_and_a_repeated_tick_is_harmless(
    pipeline: Pipeline,
) -> None:
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
    assert changed[0].tags["dagster/asset_partition_range_end"] == TODAY.isoformat()
    assert (
        json.loads(third.cursor)["newest"]["companies"]
        > json.loads(second.cursor)["newest"]["companies"]
    )


def test_planhat_snapshots_today_and_refuses_the_past(pipeline: Pipeline) -> None:
    result = pipeline.run("planhat_fetch", partition_key=TODAY.isoformat())
    assert result.success
    assert pipeline.query("select count(*) from planhat.companies")[0][0] == len(
        pipeline.planhat.companies()
    )
    owners = pipeline.query("select count(*) from planhat.companies where owner is not null")
    assert owners[0][0] > 0
    assert pipeline.query("select count(*) from planhat.users")[0][0] == len(
        pipeline.planhat.users()
    )
    assert _metadata(result, "planhat/companies")["requests"] >= 1
    yesterday = (TODAY - dt.timedelta(days=1)).isoformat()
    past = pipeline.run("planhat_fetch", partition_key=yesterday)
    assert not past.success
    failures = [e for e in past.all_events if e.is_step_failure]
    assert any("keeps no history" in e.step_failure_data.error.message for e in failures)
    assert pipeline.query("select count(*) from planhat.companies")[0][0] == len(
        pipeline.planhat.companies()
    )
