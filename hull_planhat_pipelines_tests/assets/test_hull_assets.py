"""The Hull profile store as Dagster runs it: sources -> upserts -> profiles -> firehose."""

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.orchestration import copper_range_tags
from hull_planhat_pipelines.sandbox.copper_seed import PLANHAT_TEAM_SIZE, planhat_user_ids
from hull_planhat_pipelines.sandbox.hull import HullFirehoseSandbox
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.settings import default_config_path
from hull_planhat_pipelines_tests.materialize import (
    HULL,
    PLANHAT_SNAPSHOTS,
    asset_metadata,
    materialize,
    run_job,
)


def copper_start(today: dt.date) -> dt.date:
    """The first Copper day of these tests: a short range keeps each sync quick."""
    return today - dt.timedelta(days=10)


class Stack:
    def __init__(
        self, copper, planhat, firehose: HullFirehoseSandbox, warehouse: Path, today: dt.date
    ) -> None:
        self.copper, self.planhat, self.firehose, self.warehouse = (
            copper,
            planhat,
            firehose,
            warehouse,
        )
        self.instance = dg.DagsterInstance.ephemeral()
        self.today = today
        """The UTC day the test started: the last Copper partition fetched."""
        self.start = copper_start(today)

    def run(self, job: str, **kw) -> dg.ExecuteInProcessResult:
        return run_job(job, instance=self.instance, **kw)

    def materialize(self, selection: dg.AssetSelection) -> dg.ExecuteInProcessResult:
        return materialize(selection, instance=self.instance)

    def sync(self) -> dg.ExecuteInProcessResult:
        assert self.run("copper_sync", tags=copper_range_tags(self.start, self.today)).success
        assert self.run("planhat_fetch").success
        return self.run("hull_sync")

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def stack(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    copper_sandbox_factory,
    planhat_sandbox_factory,
    hull_firehose: HullFirehoseSandbox,
) -> Stack:
    copper = copper_sandbox_factory(seed=1, scale=0.05)
    planhat = planhat_sandbox_factory(
        seed=1, scale=0.05, seed_user_ids=planhat_user_ids(1, PLANHAT_TEAM_SIZE)
    )
    stack = Stack(
        copper,
        planhat,
        hull_firehose,
        tmp_path / "warehouse.duckdb",
        dt.datetime.now(dt.UTC).date(),
    )
    config = yaml.safe_load(default_config_path().read_text())
    config["copper"]["start_date"] = stack.start.isoformat()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        "HULL_PLANHAT_CONFIG": str(tmp_path / "config.yaml"),
        "HULL_PLANHAT_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "COPPER_API_URL": copper.base_url,
        "COPPER_API_KEY": copper.api_key,
        "COPPER_USER_EMAIL": copper.user_email,
        **planhat.env(),
        **hull_firehose.env(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return stack


def test_a_sync_builds_profiles_and_forwards_them_once(stack: Stack) -> None:
    first = stack.sync()
    assert first.success
    users = stack.query("select count(*) from hull.users")[0][0]
    upserts = asset_metadata(first, "hull/user_upserts")["rows"]
    assert users > 0 and upserts > 0
    assert all(c.passed for c in first.get_asset_check_evaluations())
    assert stack.firehose.batches >= 1
    assert stack.query("select count(*) from hull.firehose_outbox") == [(0,)]
    traits = [m for m in stack.firehose.messages if m.type == "traits"]
    assert traits, "no traits reached the firehose"
    calls = len(stack.firehose.server.recorded("POST"))

    second = stack.sync()
    assert second.success
    assert asset_metadata(second, "hull/user_upserts")["rows"] == 0
    assert asset_metadata(second, "hull/account_upserts")["rows"] == 0
    assert len(stack.firehose.server.recorded("POST")) == calls  # zero firehose calls
    assert stack.query("select count(*) from hull.users")[0][0] == users


def test_segments_are_evaluated_on_the_profiles(stack: Stack) -> None:
    assert stack.sync().success
    accounts = stack.query(
        "select count(*) from hull.accounts where list_contains(segments, 'Customer accounts')"
    )[0][0]
    expected = stack.query(
        "select count(*) from hull.accounts where external_id is not null "
        "and attributes->>'copper/contact_type' = 'Customer'"
    )[0][0]
    assert accounts == expected


def test_a_planhat_updated_at_bump_alone_changes_nothing(
    stack: Stack, planhat_client_for: Callable[[PlanhatSandbox], PlanhatClient]
) -> None:
    assert stack.sync().success
    companies = stack.planhat.companies()
    body = [{"_id": c["_id"], "name": c["name"]} for c in companies]  # a no-op write
    planhat_client_for(stack.planhat).bulk_upsert("companies", body)
    assert all(
        a["updatedAt"] != b["updatedAt"]
        for a, b in zip(companies, stack.planhat.companies(), strict=True)
    )
    assert stack.materialize(PLANHAT_SNAPSHOTS).success
    again = stack.materialize(HULL)
    assert again.success
    assert asset_metadata(again, "hull/account_upserts")["rows"] == 0
    assert asset_metadata(again, "hull/user_upserts")["rows"] == 0


def test_a_firehose_outage_keeps_the_messages_for_the_next_run(stack: Stack) -> None:
    stack.firehose.server.faults.add(status=400, times=100)  # refused: not retried
    first = stack.sync()
    assert first.success  # the profiles are applied; forwarding failed
    pending = stack.query("select count(*) from hull.firehose_outbox")[0][0]
    assert pending > 0
    errors = stack.query("select count(*) from ops.sync_log where event = 'incoming.job.error'")
    assert errors[0][0] > 0
    stack.firehose.server.faults.clear()
    retry = stack.materialize(HULL)
    assert retry.success
    assert stack.query("select count(*) from hull.firehose_outbox") == [(0,)]
    assert stack.firehose.batches >= 1


def test_sync_log_rows_carry_stable_names_and_reasons(stack: Stack) -> None:
    assert stack.sync().success
    rows = stack.query("select event, reason from ops.sync_log where event like 'incoming.%.skip'")
    assert ("incoming.account.skip", "Blank opportunity type") in rows
    details = stack.query(
        "select details from ops.sync_log where event = 'incoming.user.success'"
        " and object_id is null limit 1"
    )
    assert json.loads(details[0][0])["profiles_created"] > 0
