"""Hull -> Planhat end to end, over real HTTP against the emulated Copper and Planhat APIs.

One test per rule of the outgoing sync: full cycles go through ``run_sync`` (what
``hull-planhat sync`` runs), targeted steps through the Dagster jobs; results are read from the
warehouse (read-only) and from what the Planhat sandbox received.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import requests
import yaml

from hull_planhat_pipelines.cli import SyncSummary, run_sync
from hull_planhat_pipelines.orchestration import copper_range_tags
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.sandbox.copper_seed import PLANHAT_TEAM_SIZE, planhat_user_ids
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.settings import default_config_path, load_settings
from hull_planhat_pipelines.warehouse import deliveries
from hull_planhat_pipelines_tests.materialize import (
    DELIVERY,
    DESTINATIONS,
    asset_metadata,
    failures,
    materialize,
    run_job,
)

SEED = 1
SCALE = 0.05
"""5 Copper companies (2 customers), 50 leads and people, ~80 activities: every case, quickly."""
COMPANY_SEGMENT = "Customer accounts"
CONTACT_SEGMENT = "Customers"
TRACKED = ("Meeting", "Phone Call")
OWNER = "copper/owner_planhat_id"
ROW0_EXTERNAL_ID = f"ACC-{SEED}-000000"
"""Copper company row 0: always a customer with a valid owner, and already in Planhat."""

Edit = Callable[[dict[str, Any]], None]


# -- the stack -------------------------------------------------------------------------------
class Stack:
    """Sandboxes, a configuration file and a warehouse in one directory; env points at them."""

    def __init__(self, copper: CopperSandbox, planhat: PlanhatSandbox, root: Path) -> None:
        self.copper = copper
        self.planhat = planhat
        self.root = root
        self.config = root / "config.yaml"
        self.warehouse = root / "warehouse.duckdb"
        self.instance = dg.DagsterInstance.ephemeral()
        self.today = dt.datetime.now(dt.UTC).date()
        """The UTC day the stack started: the last Copper partition fetched."""
        self.start = self.today - dt.timedelta(days=1)
        """A short partition range keeps each cycle quick; the first partition holds all older
        rows."""

    def env(self) -> dict[str, str]:
        return {
            "HULL_PLANHAT_CONFIG": str(self.config),
            "HULL_PLANHAT_WAREHOUSE": str(self.warehouse),
            "COPPER_API_URL": self.copper.base_url,
            "COPPER_API_KEY": self.copper.api_key,
            "COPPER_USER_EMAIL": self.copper.user_email,
            **self.planhat.env(),
        }

    def configure(self, edit: Edit | None = None) -> None:
        """Write the packaged configuration with a recent start date, then ``edit`` applied."""
        config = yaml.safe_load(default_config_path().read_text())
        config["copper"]["start_date"] = self.start.isoformat()
        if edit is not None:
            edit(config)
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- running ---------------------------------------------------------------------------
    def cycle(self, **options: bool) -> SyncSummary:
        """One full ``hull-planhat sync --full`` cycle; every step must succeed."""
        summary = run_sync(full=True, **options)
        assert summary.ok, summary.table()
        return summary

    def run(
        self, job: str, run_config: dict[str, Any] | None = None, **kw: Any
    ) -> dg.ExecuteInProcessResult:
        return run_job(job, instance=self.instance, run_config=run_config or {}, **kw)

    def prepare(self) -> None:
        """Copper and Planhat fetched and applied to Hull: what a delivery reads."""
        tags = copper_range_tags(self.start, self.today)
        assert self.run("copper_sync", tags=tags).success
        assert self.run("planhat_fetch").success
        assert self.run("hull_sync").success

    def materialize(
        self, selection: dg.AssetSelection, run_config: dict[str, Any] | None = None
    ) -> dg.ExecuteInProcessResult:
        return materialize(selection, instance=self.instance, run_config=run_config)

    def deliver(self, **deliveries: Any) -> dg.ExecuteInProcessResult:
        """``planhat/deliveries`` materialized with its payloads."""
        config = {"ops": {"planhat__deliveries": {"config": deliveries}}} if deliveries else None
        result = self.materialize(DELIVERY, config)
        assert result.success, failures(result)
        return result

    # -- reading ---------------------------------------------------------------------------
    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            return conn.execute(sql, params or []).fetchall()

    def has_table(self, schema: str, name: str) -> bool:
        found = self.query(
            "select count(*) from information_schema.tables "
            "where table_schema = ? and table_name = ?",
            [schema, name],
        )
        return found[0][0] > 0

    def deliveries(self, target: str, since: dt.datetime | None = None) -> dict[str, str]:
        """{key: status} of the ``planhat.deliveries`` rows of ``target`` (since a time)."""
        rows = self.query(
            "select key, status from planhat.deliveries where target = ? and delivered_at >= ?",
            [target, since or dt.datetime(2000, 1, 1, tzinfo=dt.UTC)],
        )
        return dict(rows)

    def company_items(self) -> list[dict[str, Any]]:
        """Every item of the bulk ``PUT /companies`` requests Planhat received."""
        return [item for r in self.planhat.rest.recorded("PUT", r"^/companies$") for item in r.body]

    def accounts(self, where: str = "true") -> dict[str, tuple[str | None, dict[str, Any]]]:
        """{hull_id: (external_id, attributes)} of ``hull.accounts`` rows matching ``where``."""
        rows = self.query(
            f"select hull_id, external_id, attributes from hull.accounts where {where}"
        )
        return {h: (ext, json.loads(attrs)) for h, ext, attrs in rows}

    def valid_owner_ids(self) -> set[str]:
        return {u["_id"] for u in self.planhat.users() if not u.get("removed")}

    def skips(self, reason: str) -> dict[str, dict[str, Any]]:
        """{hull_id: details} of ``outgoing.account.skip`` rows with ``reason``."""
        rows = self.query(
            "select object_id, details from ops.sync_log "
            "where event = 'outgoing.account.skip' and reason = ?",
            [reason],
        )
        return {object_id: json.loads(details) for object_id, details in rows}


@contextlib.contextmanager
def _started(
    root: Path, edit: Edit | None = None, *, rate_limit_per_minute: int | None = None
) -> Iterator[Stack]:
    """Seeded sandboxes serving, the environment pointing the pipeline at them."""
    copper = CopperSandbox(seed=SEED, scale=SCALE).start()
    planhat = PlanhatSandbox(
        seed=SEED,
        scale=SCALE,
        seed_user_ids=planhat_user_ids(SEED, PLANHAT_TEAM_SIZE),
        rate_limit_per_minute=rate_limit_per_minute,
    ).start()
    stack = Stack(copper, planhat, root)
    stack.configure(edit)
    try:
        with pytest.MonkeyPatch.context() as patch:
            # Forwarding to a Hull firehose stays off; run_sync uses an ephemeral instance.
            for name in ("DAGSTER_HOME", "HULL_FIREHOSE_URL", "HULL_ORGANIZATION"):
                patch.delenv(name, raising=False)
            for name, value in stack.env().items():
                patch.setenv(name, value)
            yield stack
    finally:
        copper.stop()
        planhat.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with _started(tmp_path) as started:
        yield started


def _step_rows(summary: SyncSummary, step: str) -> list[int | None]:
    return [s.rows for s in summary.steps if s.step == step]


def _segment(predicate: str, *, users: bool = False) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        if users:
            config["segments"]["users"][CONTACT_SEGMENT] = predicate
        else:
            config["segments"]["accounts"][COMPANY_SEGMENT] = predicate

    return edit


# -- two cycles over unchanged sources, shared by the rules that read them ---------------------
class TwoCycles:
    """What two full cycles over unchanged sources did (default configuration)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        planhat = stack.planhat
        before = {c["_id"]: c["updatedAt"] for c in planhat.companies()}
        before |= {e["_id"]: e["updatedAt"] for e in planhat.endusers()}
        self.first = stack.cycle()
        self.first_writes = planhat.write_count()
        self.first_companies = stack.company_items()
        self.first_activity_posts = [
            r.body for r in planhat.analytics.recorded("POST", r"^/analytics/bulk/")
        ]
        self.first_activities = len(planhat.activities)
        self.first_dimension_data = [dict(d) for d in planhat.dimension_data]
        after = {c["_id"]: c["updatedAt"] for c in planhat.companies()}
        after |= {e["_id"]: e["updatedAt"] for e in planhat.endusers()}
        self.bumped = {rid for rid, stamp in after.items() if before.get(rid) != stamp}
        planhat.reset_write_count()
        planhat.rest.clear_requests()
        planhat.analytics.clear_requests()
        self.second = stack.cycle()
        self.second_writes = planhat.write_count()
        self.second_requests = planhat.rest.recorded() + planhat.analytics.recorded()
        self.second_activities = len(planhat.activities)
        self.second_dimension_data = len(planhat.dimension_data)


@pytest.fixture(scope="module")
def two_cycles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoCycles]:
    # Planhat's soft quota on: the request counts below are what a real tenant would accept.
    with _started(tmp_path_factory.mktemp("two_cycles"), rate_limit_per_minute=200) as started:
        yield TwoCycles(started)


def test_a_second_cycle_over_unchanged_sources_writes_nothing(two_cycles: TwoCycles) -> None:
    first, stack = two_cycles.first, two_cycles.stack
    assert two_cycles.first_writes > 0
    assert two_cycles.first_companies, "the first cycle sent no company"
    sent = {i["externalId"] for i in two_cycles.first_companies}
    written = {c["_id"] for c in stack.planhat.companies() if c.get("externalId") in sent}
    assert written and written <= two_cycles.bumped  # Planhat bumped updatedAt on each write
    assert sum(_step_rows(first, "hull/user_upserts")) > 0

    assert two_cycles.second_writes == 0, [
        (r.method, r.path) for r in two_cycles.second_requests if r.method != "GET"
    ]
    assert all(r.method == "GET" for r in two_cycles.second_requests)
    second = two_cycles.second
    # Nothing was delivered, so no Planhat snapshot follows: Hull runs once, and writes nothing.
    assert _step_rows(second, "hull/user_upserts") == [0]
    assert _step_rows(second, "hull/account_upserts") == [0]
    for step in ("planhat/deliveries", "planhat/destination_conversations"):
        assert _step_rows(second, step) == [0]


def test_a_sync_takes_a_planhat_snapshot_when_due_or_when_records_were_created_since(
    tmp_path: Path,
) -> None:
    """A snapshot lists all of Planhat: a sync takes one on the fetch interval, as the daemon
    does, and at once when a delivery after the newest snapshot created records in Planhat (or
    left outcomes in doubt). Updates alone do not make one due: Planhat's answer named each."""
    with _started(tmp_path) as stack:
        stack.cycle()
        listings = r"^/(companies|endusers|users)$"
        stack.planhat.rest.clear_requests()
        quiet = run_sync()
        assert quiet.ok, quiet.table()
        assert stack.planhat.rest.recorded("GET", listings) == []  # not due: nothing listed
        (skipped,) = [s for s in quiet.steps if s.step == "planhat snapshot"]
        assert "not due" in skipped.detail and "every 60 min" in skipped.detail

        forced = {"ops": {"planhat__company_payloads": {"config": {"force": True}}}}
        assert stack.run("planhat_delivery", forced).success  # updates, outside a sync
        stack.planhat.rest.clear_requests()
        updated = run_sync()
        assert updated.ok, updated.table()
        assert stack.planhat.rest.recorded("GET", listings) == []  # still not due

        ours = {
            str(k)
            for (k,) in stack.query(
                "select key from planhat.delivery_fingerprints where target = 'companies'"
            )
        }
        gone = next(c for c in stack.planhat.companies() if c.get("externalId") in ours)
        requests.delete(
            f"{stack.planhat.rest_url}/companies/{gone['_id']}",
            headers={"Authorization": f"Bearer {stack.planhat.api_token}"},
            timeout=10,
        ).raise_for_status()
        assert stack.run("planhat_delivery", forced).success  # re-created, outside a sync
        assert any(c.get("externalId") == gone["externalId"] for c in stack.planhat.companies())
        stack.planhat.rest.clear_requests()
        after = run_sync()
        assert after.ok, after.table()
        assert stack.planhat.rest.recorded("GET", r"^/companies$")  # due: created since
        assert any("records created or in doubt" in s.detail for s in after.steps)


def test_activities_carry_only_tracked_events_of_contacts_and_go_once(
    two_cycles: TwoCycles,
) -> None:
    stack = two_cycles.stack
    sent = stack.deliveries("activities")
    assert sent and set(sent.values()) == {"sent"}
    tracked = ", ".join(f"'{name}'" for name in TRACKED)
    contact = f"list_contains(u.segments, '{CONTACT_SEGMENT}')"
    events = "hull.events e join hull.users u on u.hull_id = e.user_hull_id"
    expected = stack.query(
        f"select e.event_id from {events} where e.name in ({tracked}) and {contact} "
        "and (u.email is not null or u.external_id is not null) and e.occurred_at is not null"
    )
    assert set(sent) == {row[0] for row in expected}
    # The filters had something to filter: untracked events of contacts, tracked events of others.
    assert stack.query(f"select count(*) from {events} where e.name = 'Note' and {contact}")[0][0]
    others = f"select count(*) from {events} where e.name in ({tracked}) and not {contact}"
    assert stack.query(others)[0][0]

    contacts = stack.query(f"select email, external_id from hull.users u where {contact}")
    emails = {email for email, _ in contacts if email}
    external_ids = {ext for _, ext in contacts if ext}
    items = [item for body in two_cycles.first_activity_posts for item in body]
    assert len(items) == len(sent)
    for item in items:
        assert item["action"] in TRACKED
        assert item.get("email") in emails or item.get("externalId") in external_ids, item
    assert two_cycles.first_activities == len(items)

    assert two_cycles.second_activities == two_cycles.first_activities
    assert not [r for r in two_cycles.second_requests if "/analytics/" in r.path]


def test_metrics_reach_planhat_as_company_dimension_data_once(two_cycles: TwoCycles) -> None:
    stack = two_cycles.stack
    metric = load_settings(stack.config).planhat.metrics[0]
    assert metric.dimension_id == "open_pipeline_value"
    expected = {ext: float(value) for ext, value in stack.query(metric.sql)}
    assert expected
    received = [
        d for d in two_cycles.first_dimension_data if d["dimensionId"] == "open_pipeline_value"
    ]
    assert {d["model"] for d in received} == {"Company"}
    assert {d["externalId"]: d["value"] for d in received} == pytest.approx(expected)
    assert len(received) == len(expected)

    assert two_cycles.second_dimension_data == len(two_cycles.first_dimension_data)
    assert not [r for r in two_cycles.second_requests if "/dimensiondata/" in r.path]


# -- segment filters and owners ---------------------------------------------------------------
def test_companies_sent_are_exactly_the_in_segment_accounts(stack: Stack) -> None:
    # Every user with an email is a contact: their accounts must still not come along.
    stack.configure(_segment("email is not null", users=True))
    stack.prepare()
    stack.deliver()

    valid = stack.valid_owner_ids()
    inside = stack.accounts(f"list_contains(segments, '{COMPANY_SEGMENT}')")
    expected = {
        ext
        for ext, attributes in inside.values()
        if ext is not None and attributes.get(OWNER) in (None, *valid)
    }
    assert expected
    assert set(stack.deliveries("companies")) == expected
    sent = [item["externalId"] for item in stack.company_items()]
    assert sorted(sent) == sorted(expected)  # each once

    contact_only = stack.query(
        "select distinct a.external_id from hull.users u "
        "join hull.accounts a on a.hull_id = u.account_hull_id "
        f"where list_contains(u.segments, '{CONTACT_SEGMENT}') "
        f"and not list_contains(a.segments, '{COMPANY_SEGMENT}') and a.external_id is not null"
    )
    contact_only_ids = {row[0] for row in contact_only}
    assert contact_only_ids, "no contact's account is outside the company segment"
    assert not contact_only_ids & set(sent)
    assert not contact_only_ids & set(stack.deliveries("companies"))


def test_an_invalid_owner_or_co_owner_skips_the_company_without_a_request(stack: Stack) -> None:
    # Every account with an external id is in the segment, the seeded invalid owner included.
    stack.configure(_segment("external_id is not null"))
    stack.prepare()
    stack.deliver()

    valid = stack.valid_owner_ids()
    inside = stack.accounts(f"list_contains(segments, '{COMPANY_SEGMENT}')")
    invalid = {
        hull_id: ext
        for hull_id, (ext, attributes) in inside.items()
        if attributes.get(OWNER) is not None and attributes[OWNER] not in valid
    }
    assert f"ACC-{SEED}-000002" in invalid.values()  # the seed's invalid owner
    skipped = stack.skips("Invalid Owner ID")
    assert set(skipped) == set(invalid)
    assert {d["external_id"] for d in skipped.values()} == set(invalid.values())
    sent = {item["externalId"] for item in stack.company_items()}
    assert sent and not sent & set(invalid.values())
    assert not set(stack.deliveries("companies")) & set(invalid.values())
    owners = {ext: attributes.get(OWNER) for ext, attributes in inside.values() if ext in sent}

    def co_owner(config: dict[str, Any]) -> None:
        config["segments"]["accounts"][COMPANY_SEGMENT] = "external_id is not null"
        config["planhat"]["owner_attribute"] = None
        config["planhat"]["co_owner_attribute"] = OWNER

    stack.configure(co_owner)
    stack.planhat.rest.clear_requests()
    stack.deliver()
    skipped = stack.skips("Invalid Co-Owner ID")
    assert set(skipped) == set(invalid)
    items = stack.company_items()
    assert items and not {i["externalId"] for i in items} & set(invalid.values())
    for item in items:
        assert "owner" not in item
        assert item.get("coOwner") == owners[item["externalId"]], item


def test_an_in_segment_account_without_external_id_is_skipped(stack: Stack) -> None:
    predicate = "attributes->>'copper/contact_type' = 'Customer' or external_id is null"
    stack.configure(_segment(predicate))
    stack.prepare()
    stack.deliver()

    inside = stack.accounts(f"list_contains(segments, '{COMPANY_SEGMENT}')")
    without = {hull_id for hull_id, (ext, _) in inside.items() if ext is None}
    assert without, "the segment admitted no account without an external id"
    assert set(stack.skips("No external_id")) == without
    items = stack.company_items()
    assert items and all(item.get("externalId") for item in items)
    assert len(stack.deliveries("companies")) == len(inside) - len(without)


# -- change detection, forced sends and retries -----------------------------------------------
def test_only_the_changed_company_is_sent_and_a_forced_run_sends_all(stack: Stack) -> None:
    stack.cycle()
    first = {item["externalId"] for item in stack.company_items()}
    assert ROW0_EXTERNAL_ID in first and len(first) > 1

    company_id = stack.copper.edge_cases["customer_company_id"]
    record = stack.copper.record("companies", company_id)
    assert record is not None
    changed = copy.deepcopy(record)
    changed["name"] = "Renamed Harbor Systems"
    changed["date_modified"] = max(stack.copper.clock(), record["date_modified"] + 1)
    stack.copper.upsert_records("companies", [changed])
    stack.planhat.reset_write_count()
    stack.planhat.rest.clear_requests()
    since = dt.datetime.now(dt.UTC)
    stack.cycle()
    requests = stack.planhat.rest.recorded("PUT", r"^/companies$")
    assert len(requests) == 1 and len(requests[0].body) == 1
    assert requests[0].body[0]["externalId"] == ROW0_EXTERNAL_ID
    assert requests[0].body[0]["name"] == "Renamed Harbor Systems"
    assert stack.deliveries("companies", since) == {ROW0_EXTERNAL_ID: "updated"}
    assert stack.planhat.write_count() == 1

    stack.planhat.rest.clear_requests()
    forced = stack.cycle(force=True)
    resent = [item["externalId"] for item in stack.company_items()]
    assert sorted(resent) == sorted(first)
    # Planhat answered "unchanged" for each: no snapshot follows, Hull runs once. It writes
    # only what the full sync's snapshot brought back of the update before (an update is not
    # listed back at once: Planhat's answer named it): the renamed company's Planhat side.
    assert _step_rows(forced, "hull/user_upserts") == [0]
    assert _step_rows(forced, "hull/account_upserts") == [1]
    [(_, attributes)] = stack.accounts(f"external_id = '{ROW0_EXTERNAL_ID}'").values()
    assert attributes["planhat/name"] == "Renamed Harbor Systems"


def test_a_record_refused_in_a_bulk_answer_alone_is_retried(stack: Stack) -> None:
    stack.planhat.fail_items(
        "companies", lambda item: item.get("externalId") == ROW0_EXTERNAL_ID, "boom", times=1
    )
    stack.cycle()
    first = stack.query(
        "select key, status, error from planhat.deliveries where target = 'companies'"
    )
    by_key = {key: (status, error) for key, status, error in first}
    assert by_key[ROW0_EXTERNAL_ID][0] == "error" and "boom" in by_key[ROW0_EXTERNAL_ID][1]
    assert len(by_key) > 1
    assert {status for key, (status, _) in by_key.items() if key != ROW0_EXTERNAL_ID} <= {
        "created",
        "updated",
        "unchanged",
    }
    fingerprinted = "select key from planhat.delivery_fingerprints where target = 'companies'"
    assert ROW0_EXTERNAL_ID not in {row[0] for row in stack.query(fingerprinted)}

    stack.planhat.reset_write_count()
    stack.planhat.rest.clear_requests()
    since = dt.datetime.now(dt.UTC)
    stack.cycle()
    assert [item["externalId"] for item in stack.company_items()] == [ROW0_EXTERNAL_ID]
    assert stack.deliveries("companies", since) == {ROW0_EXTERNAL_ID: "updated"}
    assert stack.planhat.write_count() == 1
    assert ROW0_EXTERNAL_ID in {row[0] for row in stack.query(fingerprinted)}


def test_a_dry_run_delivery_sends_nothing_and_advances_nothing(stack: Stack) -> None:
    stack.prepare()
    stack.planhat.reset_write_count()
    dry = stack.deliver(dry_run=True)
    metadata = asset_metadata(dry, "planhat/deliveries")
    assert metadata["dry_run"] is True
    planned = metadata["planned_requests"]
    assert planned.get("companies", 0) >= 1 and planned.get("endusers", 0) >= 1
    assert stack.planhat.write_count() == 0
    assert not [r for r in stack.planhat.rest.recorded() if r.method != "GET"]
    for table in ("delivery_fingerprints", "deliveries"):
        assert not stack.has_table("planhat", table) or stack.query(
            f"select count(*) from planhat.{table}"
        ) == [(0,)]
    companies = len(stack.query("select key from planhat.company_payloads"))
    assert companies >= 1

    real = stack.deliver()
    assert stack.planhat.write_count() > 0
    assert asset_metadata(real, "planhat/deliveries")["by_target"]["companies"]
    assert len(stack.deliveries("companies")) == companies
    assert len(stack.company_items()) == companies


# -- configured destinations ------------------------------------------------------------------
IN_PLANHAT = (
    "from hull.accounts a join planhat_current.companies c on c.external_id = a.external_id "
    f"where list_contains(a.segments, '{COMPANY_SEGMENT}')"
)


def _destinations(config: dict[str, Any]) -> None:
    config["destinations"] += [
        {
            "name": "licenses",
            "method": "PUT",
            "path": "/licenses",
            "source_sql": 'select a.external_id as "companyExternalId", '
            "'LIC-' || a.external_id as \"externalId\", 100 as value " + IN_PLANHAT,
            "batch_size": 5000,
        },
        {
            "name": "company_phase",
            "method": "PATCH",
            "path": "/companies/{external_id}",
            "source_sql": "select a.external_id, 'Adoption' as phase " + IN_PLANHAT,
            "exclude": ["external_id"],
        },
    ]


def _destination_ops(**config: bool) -> dict[str, Any]:
    names = ("conversations", "licenses", "company_phase")
    return {"ops": {f"planhat__destination_{n}": {"config": config} for n in names}}


def test_configured_destinations_send_each_method_dry_run_and_test_mode(stack: Stack) -> None:
    stack.configure(_destinations)
    stack.cycle()
    rest = stack.planhat.rest
    companies = {row[0] for row in stack.query(f"select a.external_id {IN_PLANHAT}")}
    assert companies

    posts = rest.recorded("POST", r"^/conversations$")
    assert posts and all(isinstance(r.body, dict) for r in posts)  # one record per call
    assert all(r.headers.get("x-source") == "hull-planhat" for r in posts)
    assert all("user_id" not in r.body and r.body["type"] == "note" for r in posts)
    assert all(r.status == 200 for r in posts)
    assert len(stack.planhat.records("conversations")) == len(posts)
    captured = stack.query(
        "select method, path, status, response from planhat.api_responses "
        "where destination = 'conversations'"
    )
    assert len(captured) == len(posts)
    assert all(m == "POST" and p == "/conversations" and s == "created" for m, p, s, _ in captured)
    assert all('"_id"' in response for *_, response in captured)

    puts = rest.recorded("PUT", r"^/licenses$")
    assert len(puts) == 1 and len(puts[0].body) == len(companies)
    assert {i["companyExternalId"] for i in puts[0].body} == companies
    assert all(set(i) == {"companyExternalId", "externalId", "value"} for i in puts[0].body)
    assert len(stack.planhat.records("licenses")) == len(companies)

    patches = rest.recorded("PATCH")
    assert sorted(r.path for r in patches) == sorted(f"/companies/extid-{e}" for e in companies)
    assert all(r.body == {"phase": "Adoption"} for r in patches)

    stack.planhat.reset_write_count()
    dry = stack.materialize(DESTINATIONS, _destination_ops(dry_run=True, force=True))
    assert dry.success, failures(dry)
    assert stack.planhat.write_count() == 0
    assert asset_metadata(dry, "planhat/destination_licenses")["would_send"] == len(companies)
    assert asset_metadata(dry, "planhat/destination_licenses")["sent"] == 0

    before = {kind: len(rest.recorded(*kind)) for kind in (("POST",), ("PUT",), ("PATCH",))}
    test = stack.materialize(DESTINATIONS, _destination_ops(test_mode=True))
    assert test.success, failures(test)
    assert stack.planhat.write_count() == 3  # one record per destination
    # The sample conversation was created by the cycle: it is updated (PUT to the _id its
    # create returned), never created a second time.
    after = {("POST",): 0, ("PUT",): 2, ("PATCH",): 1}
    for kind, count in before.items():
        assert len(rest.recorded(*kind)) == count + after[kind]
    assert len(rest.recorded("PUT", r"^/conversations/[0-9a-f]{24}$")) == 1
    assert len(rest.recorded("PUT", r"^/licenses$")[-1].body) == 1
    for name in ("conversations", "licenses", "company_phase"):
        metadata = asset_metadata(test, f"planhat/destination_{name}")
        assert metadata["sent"] == 1 and metadata["test_mode"] is True
        assert metadata["test_response"], name


@pytest.fixture
def journal_commits(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[int]]:
    """Per target, the delivery rows of each warehouse commit as it happens."""
    commits: list[tuple[str, int]] = []
    real = deliveries.commit_checkpoint

    def spied(database: str, rows: Any, fresh: Any, **kw: Any) -> None:
        if "target" in rows.columns:
            commits.extend((str(t), int(n)) for t, n in rows["target"].value_counts().items())
        real(database, rows, fresh, **kw)

    monkeypatch.setattr(deliveries, "commit_checkpoint", spied)
    return lambda target: [n for t, n in commits if t == target]


@pytest.mark.parametrize("stable_key", [True, False], ids=["read-back", "no-external-id"])
def test_a_fast_planhat_lets_conversation_groups_grow_unless_each_create_needs_its_intent(
    stack: Stack, journal_commits: Callable[[str], list[int]], stable_key: bool
) -> None:
    """Groups of ``journal_every`` grow to about a second of sending when Planhat answers fast
    (the sandbox: a few milliseconds a create; its quota: 3,000 a minute); a create that
    cannot be read back keeps one intent, so one transaction, per record."""

    def edit(config: dict[str, Any]) -> None:
        for destination in config["destinations"]:
            destination["journal_every"] = 2
            destination["stable_key"] = stable_key

    stack.configure(edit)
    stack.cycle()
    posts = stack.planhat.rest.recorded("POST", r"^/conversations$")
    assert len(posts) >= 5
    pending = stack.query(
        "select count(*) from planhat.deliveries where target = 'conversations' "
        "and status = 'pending'"
    )[0][0]
    assert pending == len(posts)  # an intent before every create, whatever the groups
    held = stack.planhat.records("conversations")
    assert len(held) == len(posts)
    commits = journal_commits("conversations")
    if stable_key:
        # the first two intents; their outcomes with every other intent (the second group
        # covers a second of sending: all the rest); the last outcomes. Groups of two: 5+.
        assert len(commits) == 3, commits
    else:
        assert len(commits) >= len(posts) + 1, commits


def _seats(*, keyed: bool = True, **settings: Any) -> Callable[[dict[str, Any]], None]:
    """A bulk destination of seven users, two a request (``keyed``: with an external id)."""
    key = "'SEAT-' || u.hull_id as \"externalId\"," if keyed else ""

    def edit(config: dict[str, Any]) -> None:
        config["destinations"].append(
            {
                "name": "seats",
                "method": "PUT",
                "path": "/licenses",
                "source_sql": f"select u.hull_id, {key}"
                " (select min(external_id) from planhat_current.companies)"
                ' as "companyExternalId", 1 as value from hull.users u'
                " order by u.hull_id limit 7",
                "exclude": ["hull_id"],
                "batch_size": 2,
                **settings,
            }
        )

    return edit


@pytest.mark.parametrize("every", [None, 2], ids=["default-journal_every", "journal_every=batch"])
def test_a_bulk_destination_commits_each_request_as_it_comes(
    stack: Stack, journal_commits: Callable[[str], list[int]], every: int | None
) -> None:
    """A bulk PUT's outcomes are committed at its answer, never held across the next request,
    whatever ``journal_every`` says (a crash would send them again)."""
    stack.configure(_seats(**({"journal_every": every} if every else {})))
    stack.cycle()
    puts = stack.planhat.rest.recorded("PUT", r"^/licenses$")
    assert [len(r.body) for r in puts] == [2, 2, 2, 1]
    assert journal_commits("seats") == [2, 2, 2, 1]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_a_bulk_destination_killed_mid_delivery_repeats_only_the_request_in_flight(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyless items (no stable external id): a PUT of one inserts it. Killed after the third
    answer, the rerun sends only the record never sent; Planhat holds each seat once."""
    stack.configure(_seats(keyed=False, stable_key=False))
    answers = 0
    checkpoint, flush = deliveries.DeliveryJournal.checkpoint, deliveries.DeliveryJournal.flush

    def killed_after_three(self: Any, outcomes: Any) -> None:
        nonlocal answers
        checkpoint(self, outcomes)
        if self.target == "seats":
            answers += 1
            if answers == 3:
                raise Killed

    def nothing_after_the_kill(self: Any) -> None:
        if self.target != "seats" or answers < 3:
            flush(self)

    with monkeypatch.context() as patched:
        patched.setattr(deliveries.DeliveryJournal, "checkpoint", killed_after_three)
        patched.setattr(deliveries.DeliveryJournal, "flush", nothing_after_the_kill)
        with pytest.raises(AssertionError, match="destination_seats"):  # the step died
            stack.cycle()
    first = stack.planhat.rest.recorded("PUT", r"^/licenses$")
    assert [len(r.body) for r in first] == [2, 2, 2]
    stack.planhat.rest.clear_requests()
    stack.cycle()
    again = [len(r.body) for r in stack.planhat.rest.recorded("PUT", r"^/licenses$")]
    assert again == [1]
    assert len(stack.planhat.records("licenses")) == 7
