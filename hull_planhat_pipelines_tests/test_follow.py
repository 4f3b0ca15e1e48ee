"""Orchestration by assets: whatever materializes an upstream asset brings its downstream along.

Every test uses a real (temporary) Dagster instance, launches real runs against the sandboxes
(the asset graph's ``__ASSET_JOB`` included) and evaluates the downstream sensor the way the
daemon does: with the instance, the definitions and the cursor of the previous tick.
"""

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import dagster as dg
import duckdb
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from hull_planhat_pipelines.clients.copper import COPPER_OBJECTS
from hull_planhat_pipelines.orchestration import (
    AFTER_DELIVERY,
    FROM_UI_TAG,
    TRIGGER_TAG,
    copper_partition_key,
    copper_range_tags,
    needs_read_back,
    unsettled,
)
from hull_planhat_pipelines_tests.assets.test_pipeline_assets import (  # noqa: F401
    Pipeline,
    _control,
    _sensor_tick,
    pipeline,
)

SENSOR = "downstream_sensor"
COPPER = [dg.AssetKey(["copper", n]) for n in ("leads", "people", "companies")]
HULL = {
    dg.AssetKey(["hull", n])
    for n in ("users", "accounts", "events", "user_upserts", "account_upserts")
}
DELIVERIES = dg.AssetKey(["planhat", "deliveries"])
DESTINATIONS = dg.AssetKey(["planhat", "destination_conversations"])


class Ticks:
    """The sensor evaluated tick after tick over one instance, its cursor carried along."""

    def __init__(self, pipeline: Pipeline, instance: dg.DagsterInstance) -> None:  # noqa: F811
        self.pipeline = pipeline
        self.instance = instance
        self.defs = pipeline.defs()
        self.cursor: str | None = None

    def tick(self) -> dg.SensorResult | dg.SkipReason:
        sensor = self.defs.resolve_sensor_def(SENSOR)
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, definitions=self.defs
        )
        result = sensor(context)
        if isinstance(result, dg.SensorResult) and result.cursor is not None:
            self.cursor = result.cursor
        return result

    def requests(self) -> list[dg.RunRequest]:
        result = self.tick()
        return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []

    def graph_launch(self, keys: list[dg.AssetKey], **kw: Any) -> dg.ExecuteInProcessResult:
        """What "Materialize" on a selection in the asset graph runs: ``__ASSET_JOB``."""
        job = self.defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            instance=self.instance, asset_selection=keys, raise_on_error=False, **kw
        )
        assert result.dagster_run.job_name == "__ASSET_JOB"
        return result

    def execute(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(request.job_name)
        kw: dict[str, Any] = {"tags": dict(request.tags)}
        if request.asset_selection:
            kw["asset_selection"] = list(request.asset_selection)
        if request.partition_key:
            kw["partition_key"] = request.partition_key
        return job.execute_in_process(instance=self.instance, raise_on_error=False, **kw)


@pytest.fixture
def ticks(pipeline: Pipeline) -> Iterator[Ticks]:  # noqa: F811
    with dg.instance_for_test() as instance:
        pipeline.instance = instance
        yield Ticks(pipeline, instance)


def _copper_range(pipeline: Pipeline) -> dict[str, str]:  # noqa: F811
    return copper_range_tags(pipeline.start, pipeline.last)


def test_a_graph_launch_of_copper_carries_through_to_hull_planhat_and_back(ticks: Ticks) -> None:
    assert ticks.requests() == []  # nothing materialized yet: nothing to follow
    assert ticks.graph_launch(
        [*COPPER, dg.AssetKey(["copper", "activities"]), dg.AssetKey(["copper", "opportunities"])],
        tags=_copper_range(ticks.pipeline),
    ).success
    assert ticks.pipeline.run("planhat_fetch").success

    [downstream] = ticks.requests()
    selected = set(downstream.asset_selection or [])
    assert selected >= HULL and DELIVERIES in selected
    assert DESTINATIONS not in selected  # destinations follow the delivery's outcome
    assert not any(key.path[0] == "copper" for key in selected)
    assert ticks.requests() == []  # the same events never ask twice
    ran = ticks.execute(downstream)
    assert ran.success
    delivered = ran.asset_materializations_for_node("planhat__deliveries")[0].metadata
    assert needs_read_back(dict(delivered)), delivered["by_target"]

    # The delivery left records to read back (created, or applied without saying how): what
    # Planhat now holds comes back first.
    [snapshot] = ticks.requests()
    assert snapshot.job_name == "planhat_fetch" and snapshot.partition_key is None
    assert snapshot.tags[TRIGGER_TAG] == AFTER_DELIVERY
    assert ticks.execute(snapshot).success

    [back] = ticks.requests()
    assert back.tags[TRIGGER_TAG] == AFTER_DELIVERY
    selected = set(back.asset_selection or [])
    assert selected >= HULL and DESTINATIONS in selected
    assert DELIVERIES not in selected  # the delivery waits for the next change
    assert ticks.execute(back).success
    assert ticks.requests() == []  # settled: no run starts


def test_a_delivery_of_updates_alone_is_followed_by_the_destinations_without_a_snapshot(
    ticks: Ticks,
) -> None:
    """A snapshot lists all of Planhat; Planhat's answer already named every record it updated,
    so only creates and outcomes in doubt are read back."""
    every_object = [dg.AssetKey(["copper", name]) for name in COPPER_OBJECTS]
    assert ticks.graph_launch(every_object, tags=_copper_range(ticks.pipeline)).success
    assert ticks.pipeline.run("planhat_fetch").success
    _settle(ticks)
    # a person whose enduser the first chain delivered
    [(claim,)] = ticks.pipeline.query(
        "select min(p.id) from hull.users u join planhat.deliveries d on d.hull_id = u.hull_id,"
        " unnest(u.anonymous_ids) p(id) where d.target = 'endusers'"
        " and d.status in ('created', 'updated', 'sent') and p.id like 'copper-person:%'"
    )
    person = {"id": claim.split(":")[1]}
    _control(ticks.pipeline, "PATCH", f"people/{person['id']}", {"title": "Head of Updates"})
    today = copper_partition_key(ticks.pipeline.today)
    assert ticks.graph_launch([COPPER[1]], partition_key=today).success
    [downstream] = ticks.requests()
    assert DELIVERIES in set(downstream.asset_selection or [])
    ran = ticks.execute(downstream)
    assert ran.success
    delivered = ran.asset_materializations_for_node("planhat__deliveries")[0].metadata
    by_target = delivered["by_target"].value
    assert by_target["endusers"] == {"updated": 1}, by_target
    assert delivered["not_in_snapshot"].value == {"endusers": 0}  # listed by the snapshot
    assert not needs_read_back(dict(delivered))

    [follow] = ticks.requests()  # the destinations at once, no full list of Planhat
    assert follow.job_name != "planhat_fetch"
    assert DESTINATIONS in set(follow.asset_selection or [])
    assert DELIVERIES not in set(follow.asset_selection or [])
    assert ticks.execute(follow).success
    assert ticks.requests() == []


def test_which_delivery_outcomes_a_snapshot_reads_back() -> None:
    def metadata(by_target: dict[str, dict[str, int]], **more: Any) -> dict[str, Any]:
        return {"by_target": dg.MetadataValue.json(by_target), **more}

    assert not needs_read_back(metadata({"endusers": {"updated": 3, "unchanged": 2}}))
    assert not needs_read_back(metadata({"companies": {"error": 1, "ignored": 1}}))
    assert not needs_read_back(metadata({"activities": {"sent": 5}}))  # not listed by a snapshot
    assert needs_read_back(metadata({"companies": {"updated": 3, "created": 1}}))
    assert needs_read_back(metadata({"endusers": {"unconfirmed": 1}}))
    assert needs_read_back(metadata({"endusers": {"sent": 2}}))  # created or updated: unknown
    assert not needs_read_back(metadata({"companies": {"created": 1}}, dry_run=True))
    # matched, but not listed by the newest snapshot: created by a lost call or by a person
    unseen = {"not_in_snapshot": dg.MetadataValue.json({"companies": 1, "endusers": 0})}
    assert needs_read_back(metadata({"companies": {"updated": 3}}, **unseen))
    listed = {"not_in_snapshot": dg.MetadataValue.json({"companies": 0})}
    assert not needs_read_back(metadata({"companies": {"updated": 3}}, **listed))


def test_two_copper_runs_in_one_tick_make_one_downstream_run(ticks: Ticks) -> None:
    today = {"partition_key": copper_partition_key(ticks.pipeline.today)}
    assert ticks.graph_launch([COPPER[1]], **today).success
    assert ticks.pipeline.run(
        "copper_sync", partition_key=copper_partition_key(ticks.pipeline.today)
    ).success
    requests = ticks.requests()
    assert len(requests) == 1
    assert set(requests[0].asset_selection or []) >= HULL
    assert ticks.requests() == []


def test_an_upstream_update_while_the_downstream_runs_is_picked_up_later(ticks: Ticks) -> None:
    assert ticks.graph_launch(
        COPPER, partition_key=copper_partition_key(ticks.pipeline.today)
    ).success
    [first] = ticks.requests()
    # The requested run is under way when Copper lands again.
    running = ticks.instance.create_run_for_job(
        job_def=ticks.defs.resolve_job_def(first.job_name),
        asset_selection=frozenset(first.asset_selection or []),
        status=dg.DagsterRunStatus.STARTED,
    )
    lead = ticks.pipeline.copper.records("leads")[0]["id"]
    _control(ticks.pipeline, "PATCH", f"leads/{lead}", {"title": "Changed mid-run"})
    assert ticks.graph_launch(
        [COPPER[0]], partition_key=copper_partition_key(ticks.pipeline.today)
    ).success
    waiting = ticks.tick()
    assert isinstance(waiting, dg.SkipReason) and "in progress" in (waiting.skip_message or "")
    assert isinstance(ticks.tick(), dg.SkipReason)  # still waiting, still not dropped

    ticks.instance.report_run_failed(running)
    [later] = ticks.requests()
    assert set(later.asset_selection or []) >= HULL


def _latest_metadata(ticks: Ticks, key: dg.AssetKey) -> dict[str, Any]:
    event = ticks.instance.get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_a_source_run_that_finds_nothing_new_asks_for_nothing(ticks: Ticks) -> None:
    year = copper_partition_key(ticks.pipeline.today)
    assert ticks.graph_launch(COPPER, partition_key=year).success
    assert ticks.pipeline.run("planhat_fetch").success
    first = _latest_metadata(ticks, COPPER[1])
    assert first["source_unchanged"] is False and first["changed_records"] > 0
    [downstream] = ticks.requests()  # the first fetch asks for Hull and what follows
    assert ticks.execute(downstream).success
    _settle(ticks)  # ... run until nothing is asked for
    stored = dict(ticks.pipeline.query("select id, _fetched_at from copper.people"))

    # The same year and the same Planhat again: nothing new, so no run starts.
    assert ticks.graph_launch(COPPER, partition_key=year).success
    assert ticks.pipeline.run("planhat_fetch").success
    for key in [*COPPER, *(dg.AssetKey(["planhat", n]) for n in ("company_snapshots",
                                                                    "enduser_snapshots",
                                                                    "team_members"))]:  # fmt: skip
        metadata = _latest_metadata(ticks, key)
        assert metadata["source_unchanged"] is True, key
        assert metadata["changed_records"] == 0, key
    assert _latest_metadata(ticks, COPPER[1])["rows_written"] == 0
    # nothing rewritten: the rows keep the fetch time of the run that brought them
    assert dict(ticks.pipeline.query("select id, _fetched_at from copper.people")) == stored
    assert ticks.requests() == []

    # The same launch by a person in the UI carries its chain all the same: they asked for it.
    assert ticks.graph_launch([COPPER[1]], partition_key=year, tags={FROM_UI_TAG: "true"}).success
    assert _latest_metadata(ticks, COPPER[1])["source_unchanged"] is True
    [asked] = ticks.requests()
    assert set(asked.asset_selection or []) >= HULL
    assert ticks.execute(asked).success
    _settle(ticks)

    # One record edited in Copper: that run asks for what follows it again.
    person = ticks.pipeline.copper.records("people")[0]["id"]
    _control(ticks.pipeline, "PATCH", f"people/{person}", {"title": "Head of Changes"})
    assert ticks.graph_launch([COPPER[1]], partition_key=year).success
    changed = _latest_metadata(ticks, COPPER[1])
    assert changed["source_unchanged"] is False
    assert changed["changed_records"] == changed["rows_written"] == 1
    [request] = ticks.requests()
    assert set(request.asset_selection or []) >= HULL


def test_what_a_run_left_undone_is_unsettled() -> None:
    """What lets an unchanged source still ask downstream: the delivery fault tests drive it
    end to end (a killed sync, a failing analytics endpoint, a refused record)."""

    def entry(latest: int | None, planned: int | None, failed: int = 0) -> SimpleNamespace:
        record = None
        if latest is not None:
            materialization = dg.AssetMaterialization("x", metadata={"failed": failed})
            record = SimpleNamespace(storage_id=latest, asset_materialization=materialization)
        return SimpleNamespace(
            last_materialization_record=record, last_planned_materialization_storage_id=planned
        )

    assert unsettled(entry(None, None))  # never materialized
    assert unsettled(entry(10, 12))  # a later run planned it and did not produce it
    assert unsettled(entry(12, 12, failed=1))  # records left to retry
    assert not unsettled(entry(12, 12))
    assert not unsettled(entry(12, None))


def test_a_partial_launch_asks_only_for_what_follows_it(ticks: Ticks) -> None:
    assert ticks.graph_launch(
        COPPER, partition_key=copper_partition_key(ticks.pipeline.today)
    ).success
    assert ticks.pipeline.run("planhat_fetch").success
    ticks.requests()  # the copper and planhat events are now behind the cursor
    assert ticks.graph_launch(sorted(HULL, key=str)).success  # Hull alone, from the graph
    [request] = ticks.requests()
    selected = set(request.asset_selection or [])
    assert DELIVERIES in selected and not (HULL & selected)


def test_the_first_poll_over_empty_copper_tables_fetches_everything(ticks: Ticks) -> None:
    stack = ticks.pipeline
    [first] = _sensor_tick(stack, None).run_requests
    assert first.tags[TRIGGER_TAG] == "first start"
    assert first.tags[ASSET_PARTITION_RANGE_START_TAG] == copper_partition_key(ticks.pipeline.start)
    assert first.tags[ASSET_PARTITION_RANGE_END_TAG] == copper_partition_key(ticks.pipeline.last)
    assert "hull_planhat/copper_since" not in first.tags  # a range run: its years replaced
    assert {k.path[1] for k in first.asset_selection or []} == set(COPPER_OBJECTS)
    assert stack.run("copper_sync", tags=dict(first.tags)).success
    stored = stack.query("select count(*) from copper.leads")[0][0]
    assert stored == len(stack.copper.records("leads"))  # every lead, not today's only

    # Tables filled: a poll without a cursor asks only for the newest changes.
    again = _sensor_tick(stack, None).run_requests
    assert again and all(r.tags[TRIGGER_TAG] != "first start" for r in again)


def _copper_poll(ticks: Ticks, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    """A tick of the Copper poll as the daemon runs it: the definitions' own resources (built
    from the environment), none given to the context."""
    sensor = ticks.defs.resolve_sensor_def("copper_incremental_sensor")
    context = dg.build_sensor_context(
        instance=ticks.instance, cursor=cursor, definitions=ticks.defs
    )
    return sensor(context)


def test_the_copper_poll_without_credentials_skips_and_names_them(
    ticks: Ticks, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = ticks.pipeline.copper.api_key
    monkeypatch.delenv("COPPER_API_KEY")
    monkeypatch.setenv("COPPER_USER_EMAIL", "")
    skipped = _copper_poll(ticks, None)
    assert isinstance(skipped, dg.SkipReason), skipped
    message = skipped.skip_message or ""
    assert "COPPER_API_KEY, COPPER_USER_EMAIL not set" in message
    assert secret not in message
    assert ticks.pipeline.copper.server.recorded() == []  # nothing asked of Copper

    monkeypatch.setenv("COPPER_API_KEY", secret)
    skipped = _copper_poll(ticks, None)
    assert isinstance(skipped, dg.SkipReason)
    assert "COPPER_USER_EMAIL not set" in (skipped.skip_message or "")
    assert "COPPER_API_KEY" not in (skipped.skip_message or "")


def test_a_failed_first_start_is_asked_for_again_once_until_one_succeeds(ticks: Ticks) -> None:
    first = _copper_poll(ticks, None)
    assert isinstance(first, dg.SensorResult)
    [request] = first.run_requests or []
    assert request.tags[TRIGGER_TAG] == "first start"
    # a second tick before the run exists asks under the same key: the daemon makes one run
    [again] = _copper_poll(ticks, first.cursor).run_requests or []
    assert again.run_key == request.run_key and again.tags == request.tags

    job = ticks.defs.resolve_job_def("copper_sync")
    run = ticks.instance.create_run_for_job(
        job_def=job,
        tags={**request.tags, "dagster/run_key": request.run_key or ""},
        asset_selection=frozenset(request.asset_selection or []),
        status=dg.DagsterRunStatus.NOT_STARTED,
    )
    waiting = _copper_poll(ticks, first.cursor)
    assert isinstance(waiting, dg.SkipReason)  # created, not yet started: no second full fetch
    assert run.run_id[:8] in (waiting.skip_message or "")

    ticks.instance.report_run_failed(run)  # the first start failed: the tables stay empty
    retry = _copper_poll(ticks, first.cursor)
    assert isinstance(retry, dg.SensorResult)
    [second] = retry.run_requests or []
    assert second.tags[TRIGGER_TAG] == "first start" and second.run_key != request.run_key
    assert {k.path[1] for k in second.asset_selection or []} == set(COPPER_OBJECTS)
    assert second.tags[ASSET_PARTITION_RANGE_START_TAG] == copper_partition_key(
        ticks.pipeline.start
    )
    assert "hull_planhat/copper_since" not in second.tags  # every year replaced

    tags = {**second.tags, "dagster/run_key": second.run_key or ""}
    assert ticks.pipeline.run("copper_sync", tags=tags).success
    after = _copper_poll(ticks, retry.cursor)
    assert isinstance(after, dg.SensorResult)
    assert all(r.tags[TRIGGER_TAG] != "first start" for r in after.run_requests or [])
    assert ticks.pipeline.query("select count(*) from copper.leads")[0][0] == len(
        ticks.pipeline.copper.records("leads")
    )


def test_the_first_chain_waits_for_planhat_users_before_payloads(ticks: Ticks) -> None:
    every_object = [dg.AssetKey(["copper", name]) for name in COPPER_OBJECTS]
    assert ticks.graph_launch(every_object, tags=_copper_range(ticks.pipeline)).success
    [hull_only] = ticks.requests()
    assert set(hull_only.asset_selection or []) == HULL  # owners cannot be validated yet
    assert ticks.execute(hull_only).success
    assert ticks.requests() == []
    assert ticks.pipeline.run("planhat_fetch").success
    [rest] = ticks.requests()
    assert DELIVERIES in set(rest.asset_selection or [])
    ran = ticks.execute(rest)
    assert ran.success
    metadata = ran.asset_materializations_for_node("planhat__deliveries")[0].metadata
    assert needs_read_back(dict(metadata)), metadata["by_target"]  # the first chain delivers


def _check(result: dg.ExecuteInProcessResult, asset: str, name: str) -> Any:
    [evaluation] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key.to_user_string() == asset and e.check_name == name
    ]
    return evaluation


def test_owner_validity_warns_and_a_broken_identity_stops_the_delivery(ticks: Ticks) -> None:
    every_object = [dg.AssetKey(["copper", name]) for name in COPPER_OBJECTS]
    assert ticks.graph_launch(every_object, tags=_copper_range(ticks.pipeline)).success
    assert ticks.pipeline.run("planhat_fetch").success
    [downstream] = ticks.requests()
    first = ticks.execute(downstream)
    assert first.success
    before = _check(first, "hull/accounts", "valid_owner")  # the seed has a few bad owners
    assert "nobody-we-know" not in before.metadata["offending_sample"].value
    job = ticks.defs.resolve_job_def("profiles_and_delivery")

    with duckdb.connect(str(ticks.pipeline.warehouse)) as conn:
        conn.execute(
            "update hull.accounts set attributes = json_merge_patch(attributes, "
            """'{"copper/owner_planhat_id": "nobody-we-know"}') where hull_id = """
            "(select hull_id from hull.accounts where len(segments) > 0 order by hull_id limit 1)"
        )
    unknown_owner = job.execute_in_process(instance=ticks.instance, raise_on_error=False)
    owner = _check(unknown_owner, "hull/accounts", "valid_owner")
    assert not owner.passed and owner.severity == dg.AssetCheckSeverity.WARN
    assert "nobody-we-know" in owner.metadata["offending_sample"].value
    assert unknown_owner.success  # a warning: the delivery skips that company alone

    with duckdb.connect(str(ticks.pipeline.warehouse)) as conn:
        conn.execute(
            "insert into hull.users select * replace ('twin-' || hull_id as hull_id) "
            "from hull.users where email is not null order by hull_id limit 1"
        )
    broken = job.execute_in_process(instance=ticks.instance, raise_on_error=False)
    assert not _check(broken, "hull/users", "unique_email").passed
    assert not broken.success
    delivered = [m for m in broken.get_asset_materialization_events() if m.asset_key == DELIVERIES]
    assert delivered == []  # the blocking check stopped the delivery


def _settle(ticks: Ticks) -> None:
    """Run what the sensor asks for until it asks for nothing."""
    for _ in range(4):
        requests = ticks.requests()
        if not requests:
            return
        for request in requests:
            assert ticks.execute(request).success
    raise AssertionError("the chain did not settle")


def test_dry_run_and_forced_send_presets(ticks: Ticks) -> None:
    every_object = [dg.AssetKey(["copper", name]) for name in COPPER_OBJECTS]
    assert ticks.graph_launch(every_object, tags=_copper_range(ticks.pipeline)).success
    assert ticks.pipeline.run("planhat_fetch").success
    _settle(ticks)
    planhat = ticks.pipeline.planhat
    writes = planhat.write_count()

    dry = ticks.pipeline.run("planhat_dry_run")  # the preset, launched as is
    assert dry.success
    assert planhat.write_count() == writes  # nothing written
    metadata = dry.asset_materializations_for_node("planhat__deliveries")[0].metadata
    assert metadata["dry_run"].value is True
    assert ticks.requests() == []  # a dry run triggers nothing

    forced = ticks.pipeline.run("planhat_forced_send")
    assert forced.success
    payloads = forced.asset_materializations_for_node("planhat__company_payloads")[0].metadata
    assert payloads["forced"].value is True and payloads["rows"].value > 0
    assert planhat.write_count() > writes  # every in-segment company sent again


def test_what_a_later_run_brought_up_to_date_is_not_asked_for_again(ticks: Ticks) -> None:
    """A UI "Materialize all" is a backfill of runs of their own: the sources, then what
    follows them. The sources' events must not ask for that chain a second time."""
    year = {"partition_key": copper_partition_key(ticks.pipeline.today)}
    assert ticks.graph_launch(COPPER, **year).success
    assert ticks.pipeline.run("planhat_fetch").success
    _settle(ticks)

    ui = {FROM_UI_TAG: "true"}
    person = ticks.pipeline.copper.records("people")[0]["id"]
    _control(ticks.pipeline, "PATCH", f"people/{person}", {"title": "Head of Backfills"})
    assert ticks.graph_launch(COPPER, tags=ui, **year).success  # the backfill's source runs
    assert ticks.pipeline.run("planhat_fetch", tags=ui).success
    chain = ticks.defs.resolve_job_def("profiles_and_delivery").asset_layer.executable_asset_keys
    assert chain >= HULL and DELIVERIES in chain and DESTINATIONS in chain
    assert ticks.graph_launch(sorted(chain, key=str), tags=ui).success  # ... then the rest
    assert ticks.pipeline.query(
        "select count(*) from hull.user_upserts where value like '%Head of Backfills%'"
    ) == [(1,)]
    requests = ticks.requests()
    # at most the snapshot that reads back what the delivery created; never the chain again
    assert all(r.job_name == "planhat_fetch" for r in requests), requests

    # A source that lands after the chain started still asks for it, and a dry run of the
    # chain since then brings nothing up to date (it sent nothing).
    _control(ticks.pipeline, "PATCH", f"people/{person}", {"title": "Head of Later"})
    assert ticks.graph_launch([COPPER[1]], **year).success
    assert ticks.pipeline.run("planhat_dry_run").success
    [again] = [r for r in ticks.requests() if r.job_name != "planhat_fetch"]
    assert set(again.asset_selection or []) >= HULL
