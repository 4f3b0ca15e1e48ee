"""Incoming truth against the Copper sandbox: deletions detach, identity follows the source,
every record leaves its own log row, and an incremental history equals a sync from scratch.

Copper is edited in process (the sandbox's store), the pipeline reads it over real HTTP."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml

from hull_planhat_pipelines.orchestration import copper_range_tags, copper_window_tags, day_start
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.settings import default_config_path
from hull_planhat_pipelines.sync.canonical import canonical_json
from hull_planhat_pipelines_tests.materialize import HULL, materialize, run_job


class Pipeline:
    def __init__(self, copper: CopperSandbox, warehouse: Path, today: dt.date) -> None:
        self.copper, self.warehouse = copper, warehouse
        self.instance = dg.DagsterInstance.ephemeral()
        self.today = today
        """The UTC day the pipeline was set up: the last Copper partition, the poll's day."""
        self.start = today - dt.timedelta(days=10)

    def run(self, job: str, **kw: Any) -> dg.ExecuteInProcessResult:
        return run_job(job, instance=self.instance, **kw)

    def materialize(self, selection: dg.AssetSelection) -> dg.ExecuteInProcessResult:
        return materialize(selection, instance=self.instance)

    def full_refresh(self) -> dg.ExecuteInProcessResult:
        fetched = self.run("copper_sync", tags=copper_range_tags(self.start, self.today))
        assert fetched.success
        result = self.run("hull_sync")
        assert result.success
        return result

    def incremental(self) -> dg.ExecuteInProcessResult:
        """What the 5-minute poll runs: the records changed since today began, upserted."""
        tags = copper_window_tags(self.today, self.today, day_start(self.today), None)
        assert self.run("copper_sync", tags=tags).success
        result = self.run("hull_sync")
        assert result.success
        return result

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            return conn.execute(sql, params or []).fetchall()

    def user(self, anonymous_id: str) -> dict[str, Any]:
        return self._profile("users", anonymous_id)

    def account(self, anonymous_id: str) -> dict[str, Any]:
        return self._profile("accounts", anonymous_id)

    def _profile(self, table: str, anonymous_id: str) -> dict[str, Any]:
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            frame = conn.execute(
                f"select * from hull.{table} where list_contains(anonymous_ids, ?)",
                [anonymous_id],
            ).fetchdf()
        assert len(frame) == 1, f"{len(frame)} {table} hold {anonymous_id}"
        row = frame.iloc[0].to_dict()
        row["attributes"] = json.loads(row["attributes"])
        return row

    def log(self, event: str, object_id: Any = None) -> list[tuple]:
        where = "" if object_id is None else f" and object_id = '{object_id}'"
        return self.query(
            f"select object_type, object_id, reason, details from ops.sync_log"
            f" where event = '{event}'{where}"
        )


def _pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copper: CopperSandbox, name: str):
    pipeline = Pipeline(copper, tmp_path / f"{name}.duckdb", dt.datetime.now(dt.UTC).date())
    config = yaml.safe_load(default_config_path().read_text())
    config["copper"]["start_date"] = pipeline.start.isoformat()
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    env = {
        "HULL_PLANHAT_CONFIG": str(tmp_path / f"{name}.yaml"),
        "HULL_PLANHAT_WAREHOUSE": str(tmp_path / f"{name}.duckdb"),
        "COPPER_API_URL": copper.base_url,
        "COPPER_API_KEY": copper.api_key,
        "COPPER_USER_EMAIL": copper.user_email,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return pipeline


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copper_sandbox_factory) -> Pipeline:
    return _pipeline(tmp_path, monkeypatch, copper_sandbox_factory(seed=1, scale=0.05), "main")


def _groups(attributes: dict[str, Any], group: str) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k.startswith(f"{group}/")}


def _user_activity(copper: CopperSandbox, parent_type: str) -> dict[str, Any]:
    user_types = {t["id"] for t in copper.metadata.activity_types["user"]}
    names = {t["id"]: t["name"] for t in copper.metadata.activity_types["user"]}
    return next(
        a
        for a in copper.records("activities")
        if a["type"]["id"] in user_types
        and a["type"]["category"] == "user"
        and names[a["type"]["id"]] in ("Note", "Phone Call", "Meeting")
        and a["parent"]["type"] == parent_type
    )


# -- case 2: deletions are detaches -------------------------------------------------------------
def test_deleted_records_detach_from_their_profiles_and_come_back(pipeline: Pipeline) -> None:
    copper = pipeline.copper
    pipeline.full_refresh()
    lead = next(r for r in copper.records("leads") if r.get("email"))
    person = next(
        r
        for r in copper.records("people")
        if r.get("emails") and r.get("title") and r["company_id"] is not None
    )
    company_id = next(
        c["id"]
        for c in copper.records("companies")
        if any(p["company_id"] == c["id"] for p in copper.records("people"))
    )
    activity = _user_activity(copper, "person")
    event_id = f"copper-activity:{activity['id']}"
    assert pipeline.query("select count(*) from hull.events where event_id = ?", [event_id]) == [
        (1,)
    ]
    before = pipeline.user(f"copper-person:{person['id']}")
    assert _groups(before["attributes"], "copper_person")
    account = pipeline.account(f"copper:{company_id}")
    members = {
        r[0]
        for r in pipeline.query(
            "select hull_id from hull.users where account_hull_id = ?", [account["hull_id"]]
        )
    }
    assert members

    copper.delete_records("leads", [lead["id"]])
    copper.delete_records("people", [person["id"]])
    copper.delete_records("companies", [company_id])
    copper.delete_records("activities", [activity["id"]])
    pipeline.full_refresh()

    detached = pipeline.user(f"copper-person:{person['id']}")
    assert detached["hull_id"] == before["hull_id"]  # the profile and its anonymous id stay
    assert set(_groups(detached["attributes"], "copper_person")) == {"copper_person/deleted_at"}
    lead_profile = pipeline.user(f"copper-lead:{lead['id']}")
    assert "copper_lead/deleted_at" in lead_profile["attributes"]
    assert set(_groups(lead_profile["attributes"], "copper_lead")) == {"copper_lead/deleted_at"}
    gone = pipeline.account(f"copper:{company_id}")
    assert set(_groups(gone["attributes"], "copper")) == {"copper/deleted_at"}
    assert pipeline.query(
        "select count(*) from hull.users where account_hull_id = ?", [gone["hull_id"]]
    ) == [(0,)]
    assert pipeline.query("select count(*) from hull.events where event_id = ?", [event_id]) == [
        (0,)
    ]
    assert ("person", str(person["id"])) in {r[:2] for r in pipeline.log("incoming.user.deleted")}
    assert ("lead", str(lead["id"])) in {r[:2] for r in pipeline.log("incoming.user.deleted")}
    assert [r[:2] for r in pipeline.log("incoming.account.deleted")] == [
        ("company", str(company_id))
    ]
    assert [r[:2] for r in pipeline.log("incoming.event.deleted")] == [
        ("activity", str(activity["id"]))
    ]

    # nothing more to detach: a second refresh changes nothing
    pipeline.full_refresh()
    assert len(pipeline.log("incoming.user.deleted")) == 2

    # the person comes back (restored in Copper): same profile, deleted_at cleared
    copper.upsert_records("people", [{**person, "date_modified": copper.clock()}])
    pipeline.incremental()
    back = pipeline.user(f"copper-person:{person['id']}")
    assert back["hull_id"] == before["hull_id"]
    assert "copper_person/deleted_at" not in back["attributes"]
    assert back["attributes"]["copper_person/title"] == before["attributes"]["copper_person/title"]


# -- case 9: Planhat rows without _id (pure: the frame the Planhat asset writes) ------------------
def test_planhat_endusers_without_id_are_skipped_one_by_one_never_collapsed() -> None:
    from hull_planhat_pipelines.sync.hull.changes import ProfileStore, compute_changes
    from hull_planhat_pipelines.sync.hull.from_planhat import PlanhatRows
    from hull_planhat_pipelines.sync.planhat.records import endusers_frame
    from hull_planhat_pipelines_tests.hull_support import NOW, example_settings

    records = [
        {"email": "no-id-1@x.io", "firstName": "A"},
        {"_id": "", "email": "no-id-2@x.io", "firstName": "B"},
        {"_id": "e1", "email": " Ann@X.io ", "firstName": "Ann"},
        {"_id": "e2", "email": "not-an-email", "firstName": "C"},
        {"_id": "e3", "email": "nul\x00@x.io", "firstName": "D"},
    ]
    frame = endusers_frame(records, fetched_at=NOW)
    assert len(frame) == 5  # both rows without _id kept, not collapsed into one
    changes = compute_changes(
        example_settings(), ProfileStore(), None, PlanhatRows(endusers=frame), now=NOW
    )
    skips = [(e.object_id, e.reason) for e in changes.log if e.event == "incoming.user.skip"]
    assert sorted(skips, key=str) == sorted(
        [(None, "No _id"), (None, "No _id"), ("e2", "Invalid email"), ("e3", "Invalid email")],
        key=str,
    )
    assert changes.user_claims.query("claim == 'email'")["value"].tolist() == ["ann@x.io"]
    assert set(changes.user_claims["hull_id"]) == set(changes.user_upserts["hull_id"])
    assert changes.user_claims["hull_id"].nunique() == 1


def _lead(copper: CopperSandbox, lead_id: int, email: str | None, **extra: Any) -> dict[str, Any]:
    template = next(r for r in copper.records("leads") if r.get("email"))
    record = {**template, "id": lead_id, "name": f"Lead {lead_id}", **extra}
    record["email"] = None if email is None else {"email": email, "category": "work"}
    record["date_created"] = record["date_modified"] = copper.clock()
    return record


def _person(copper: CopperSandbox, person_id: int, email: str, **extra: Any) -> dict[str, Any]:
    template = next(r for r in copper.records("people") if r.get("emails"))
    record = {**template, "id": person_id, "name": f"Person {person_id}", **extra}
    record["emails"] = [{"email": email, "category": "work"}]
    record["custom_fields"] = []
    record["date_created"] = record["date_modified"] = copper.clock()
    return record


def _edit(copper: CopperSandbox, name: str, record: dict[str, Any], **changes: Any) -> None:
    copper.upsert_records(name, [{**record, **changes, "date_modified": copper.clock() + 1}])


# -- case 3: a changed primary email reaches the profile ------------------------------------------
def test_a_persons_new_primary_email_replaces_the_old_one(pipeline: Pipeline) -> None:
    copper = pipeline.copper
    alone = _person(copper, 91000001, "old.address@alone.example.com", company_id=None)
    shared = _person(copper, 91000002, "shared@both.example.com", company_id=None)
    twin = _lead(copper, 91000003, "shared@both.example.com")
    copper.upsert_records("people", [alone, shared])
    copper.upsert_records("leads", [twin])
    pipeline.full_refresh()
    before = pipeline.user("copper-person:91000001")
    assert before["email"] == "old.address@alone.example.com"
    assert (
        pipeline.user("copper-lead:91000003")["hull_id"]
        == pipeline.user("copper-person:91000002")["hull_id"]
    )

    _edit(copper, "people", alone, emails=[{"email": "New.Address@Alone.example.com "}])
    _edit(copper, "people", shared, emails=[{"email": "moved@both.example.com"}])
    pipeline.incremental()

    after = pipeline.user("copper-person:91000001")
    assert after["hull_id"] == before["hull_id"]
    assert after["email"] == "new.address@alone.example.com"  # trimmed, lower-cased
    assert pipeline.query(
        "select count(*) from hull.users where email = 'old.address@alone.example.com'"
    ) == [(0,)]
    # the lead on the shared profile still holds the old address: kept, and a logged conflict
    assert pipeline.user("copper-person:91000002")["email"] == "shared@both.example.com"
    conflicts = pipeline.log("incoming.user.skip", "copper-person:91000002")
    assert [(r[0], r[2]) for r in conflicts] == [
        ("claim", "Claim not applied: Profile keeps another email")
    ]


# -- case 4: a lead converted into an existing person merges the two profiles ----------------------
def test_a_lead_converted_into_an_existing_person_merges_the_profiles(pipeline: Pipeline) -> None:
    copper = pipeline.copper
    lead = _lead(copper, 92000001, "prospect@convert.example.com")
    person = _person(copper, 92000002, "customer@convert.example.com", company_id=None)
    copper.upsert_records("leads", [lead])
    copper.upsert_records("people", [person])
    note_type = next(t for t in copper.metadata.activity_types["user"] if t["name"] == "Note")
    activity = {
        **_user_activity(copper, "lead"),
        "id": 92000003,
        "parent": {"id": 92000001, "type": "lead"},
        "type": {"id": note_type["id"], "category": "user"},
        "activity_date": copper.clock() - 60,
    }
    copper.upsert_records("activities", [activity])
    pipeline.full_refresh()
    lead_user = pipeline.user("copper-lead:92000001")
    person_user = pipeline.user("copper-person:92000002")
    assert lead_user["hull_id"] != person_user["hull_id"]
    assert _groups(lead_user["attributes"], "copper_lead")
    assert pipeline.query(
        "select user_hull_id from hull.events where event_id = 'copper-activity:92000003'"
    ) == [(lead_user["hull_id"],)]

    converted_at = copper.clock()
    _edit(copper, "leads", lead, converted_contact_id=92000002, converted_at=converted_at)
    _edit(
        copper,
        "people",
        person,
        leads_converted_from=[{"lead_id": 92000001, "converted_timestamp": converted_at}],
    )
    pipeline.incremental()

    merged = pipeline.user("copper-person:92000002")
    assert pipeline.user("copper-lead:92000001")["hull_id"] == merged["hull_id"]
    assert merged["hull_id"] == person_user["hull_id"]
    assert merged["email"] == "customer@convert.example.com"
    assert _groups(merged["attributes"], "copper_lead") == _groups(
        lead_user["attributes"], "copper_lead"
    )
    assert _groups(merged["attributes"], "copper_person") == _groups(
        person_user["attributes"], "copper_person"
    )
    assert pipeline.query(
        "select user_hull_id from hull.events where event_id = 'copper-activity:92000003'"
    ) == [(merged["hull_id"],)]
    assert pipeline.query(
        "select count(*) from hull.users where hull_id = ?", [lead_user["hull_id"]]
    ) == [(0,)]
    merges = pipeline.log("incoming.user.merged", lead_user["hull_id"])
    assert [json.loads(r[3])["into_hull_id"] for r in merges] == [merged["hull_id"]]


# -- case 9: loose identities -----------------------------------------------------------------------
def test_emails_match_trimmed_and_lower_cased_and_invalid_ones_go_nowhere(
    pipeline: Pipeline,
) -> None:
    copper = pipeline.copper
    copper.upsert_records(
        "leads",
        [
            _lead(copper, 93000001, "Ann@X.io"),
            _lead(copper, 93000002, "ann@x.io "),
            _lead(copper, 93000004, "not-an-email"),
            _lead(copper, 93000005, "nul\x00@x.io"),
        ],
    )
    copper.upsert_records("people", [_person(copper, 93000003, "ann@x.io", company_id=None)])
    pipeline.full_refresh()
    ann = {
        pipeline.user(key)["hull_id"] for key in ("copper-lead:93000001", "copper-lead:93000002")
    }
    ann.add(pipeline.user("copper-person:93000003")["hull_id"])
    assert len(ann) == 1
    assert pipeline.query("select email from hull.users where hull_id = ?", list(ann)) == [
        ("ann@x.io",)
    ]
    for lead_id in (93000004, 93000005):
        assert pipeline.query(
            "select count(*) from hull.users where list_contains(anonymous_ids, ?)",
            [f"copper-lead:{lead_id}"],
        ) == [(0,)]
        assert [(r[0], r[2]) for r in pipeline.log("incoming.user.skip", lead_id)] == [
            ("lead", "Invalid email")
        ]
    assert pipeline.query(
        "select count(*) from hull.users where email like '%not-an-email%' or email like '%nul%'"
    ) == [(0,)]


# -- case 7: per-record incoming logs ---------------------------------------------------------------
def test_every_record_has_its_own_log_row_and_the_run_log_counts_them(
    pipeline: Pipeline,
) -> None:
    copper = pipeline.copper
    result = pipeline.full_refresh()
    rows = pipeline.query(
        "select event, object_type, object_id, reason from ops.sync_log"
        " where run_id = ? and object_id is not null",
        [result.run_id],
    )
    logged = {
        (object_type, object_id): (event, reason) for event, object_type, object_id, reason in rows
    }
    for name, object_type in (("leads", "lead"), ("people", "person"), ("companies", "company")):
        for record in copper.records(name):
            event, _ = logged[(object_type, str(record["id"]))]
            kind = "account" if name == "companies" else "user"
            assert event in (f"incoming.{kind}.success", f"incoming.{kind}.skip"), record["id"]
    no_email = copper.edge_cases["lead_without_email_id"]
    assert logged[("lead", str(no_email))] == (
        "incoming.user.success",
        "No email: identified by its anonymous id only",
    )
    events = {r[0] for r in pipeline.query("select source_id from hull.events")}
    assert events and all(logged[("activity", i)][0] == "incoming.event.success" for i in events)
    # per-record rows are written in bulk; their details are canonical JSON like every row's
    for event in ("incoming.user.success", "incoming.event.success"):
        [(text,)] = pipeline.query(
            "select details from ops.sync_log where run_id = ? and event = ?"
            " and object_id is not null limit 1",
            [result.run_id, event],
        )
        assert text == canonical_json(json.loads(text)) and json.loads(text)["hull_id"]
    blank = copper.edge_cases["opportunity_blank_type_id"]
    assert logged[("opportunity", str(blank))] == (
        "incoming.account.skip",
        "Blank opportunity type",
    )

    messages = [
        e.user_message
        for e in pipeline.instance.all_logs(result.run_id)
        if "incoming.user.success" in (e.user_message or "")
    ]
    counts = pipeline.query(
        "select reason, count(*) from ops.sync_log where run_id = ?"
        " and event = 'incoming.user.success' group by 1",
        [result.run_id],
    )
    assert sum(n for _, n in counts) > 10
    # one line per (event, reason), with its count: not one line per record
    assert sorted(messages) == sorted(
        f"incoming.user.success{f' {reason}' if reason else ''}: {n} (see ops.sync_log)"
        for reason, n in counts
    )


# -- case 10: a changed segment definition applies on the next run ---------------------------------
def test_a_changed_segment_is_re_evaluated_without_any_profile_change(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.full_refresh()

    def members() -> int:
        return pipeline.query(
            "select count(*) from hull.accounts where list_contains(segments, 'Customer accounts')"
        )[0][0]

    narrow = members()
    widened = pipeline.query("select count(*) from hull.accounts where external_id is not null")
    assert widened[0][0] > narrow
    config_path = tmp_path / "main.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["segments"]["accounts"]["Customer accounts"] = "external_id is not null"
    config_path.write_text(yaml.safe_dump(config))
    result = pipeline.materialize(HULL)
    assert result.success
    assert members() == widened[0][0]
    assert pipeline.query(
        "select count(*) from hull.account_upserts where run_id = ?", [result.run_id]
    ) == [(0,)]  # no profile data changed: only membership


# -- end to end: an incremental history equals a sync from scratch ----------------------------------
def _snapshot(pipeline: Pipeline, forget: set[str]) -> dict[str, Any]:
    """Users, accounts and events keyed by their profiles' anonymous ids (hull ids depend on
    history), ``*/deleted_at`` and the anonymous ids of deleted records left out, and profiles
    left holding nothing else (detached ones) dropped."""

    def profiles(table: str) -> dict[str, dict[str, Any]]:
        with duckdb.connect(str(pipeline.warehouse), read_only=True) as conn:
            frame = conn.execute(f"select * from hull.{table}").fetchdf()
        out = {}
        for row in frame.to_dict("records"):
            attributes = {
                k: v for k, v in json.loads(row["attributes"]).items() if "/deleted_at" not in k
            }
            keys = tuple(sorted(set(row["anonymous_ids"]) - forget))
            if not keys or (not attributes and set(row["anonymous_ids"]) & forget):
                continue
            out[row["hull_id"]] = {
                "keys": keys,
                "claim": row.get("email", row.get("domain")),
                "external_id": row["external_id"],
                "attributes": attributes,
                "account": row.get("account_hull_id"),
            }
        return out

    accounts = profiles("accounts")
    users = profiles("users")
    for user in users.values():
        user["account"] = accounts[user["account"]]["keys"] if user["account"] else None
    events = pipeline.query(
        "select event_id, user_hull_id, name, properties, occurred_at from hull.events"
    )
    return {
        "users": sorted(users.values(), key=lambda p: p["keys"]),
        "accounts": sorted(accounts.values(), key=lambda p: p["keys"]),
        "events": sorted((e[0], users[e[1]]["keys"], e[2], json.loads(e[3]), e[4]) for e in events),
    }


def test_edits_deletions_and_a_conversion_end_equal_to_a_sync_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copper_sandbox_factory
) -> None:
    copper = copper_sandbox_factory(seed=1, scale=0.05)
    history = _pipeline(tmp_path, monkeypatch, copper, "history")
    lead = _lead(copper, 94000001, "someone@prospect.example.com")
    copper.upsert_records("leads", [lead])
    history.full_refresh()

    people = copper.records("people")
    lone = next(
        p for p in people if p.get("emails") and not p.get("leads_converted_from") and p["title"]
    )
    company = next(
        c
        for c in copper.records("companies")
        if c["id"] != lone["company_id"] and any(p["company_id"] == c["id"] for p in people)
    )
    staff = [p for p in people if p["company_id"] == company["id"]]
    doomed_person = next(
        p for p in people if p["id"] not in {lone["id"], *(s["id"] for s in staff)}
    )
    doomed_lead = next(r for r in copper.records("leads") if r.get("email"))
    activity = _user_activity(copper, "person")

    # first round of edits, then a full refresh
    _edit(copper, "people", lone, title="Chief Everything Officer")
    copper.delete_records("people", [doomed_person["id"]])
    copper.delete_records("leads", [doomed_lead["id"]])
    copper.delete_records("companies", [company["id"]])
    for member in staff:  # Copper keeps a deleted company's people, without a company
        _edit(copper, "people", member, company_id=None)
    # the company's deals are deleted with it; a deleted record's activities go with it
    copper.delete_records(
        "opportunities",
        [o["id"] for o in copper.records("opportunities") if o["company_id"] == company["id"]],
    )
    parents = {("person", doomed_person["id"]), ("lead", doomed_lead["id"])}
    copper.delete_records(
        "activities",
        [activity["id"]]
        + [
            a["id"]
            for a in copper.records("activities")
            if (a["parent"]["type"], a["parent"]["id"]) in parents
        ],
    )
    history.full_refresh()

    # second round: a changed email and a lead converted into a person already synced, then
    # one incremental sync
    person = next(
        p
        for p in copper.records("people")
        if p.get("emails") and p["id"] not in {lone["id"]} and not p.get("leads_converted_from")
    )
    assert (
        history.user("copper-lead:94000001")["hull_id"]
        != history.user(f"copper-person:{person['id']}")["hull_id"]
    )
    _edit(copper, "people", lone, emails=[{"email": "Renamed.Person@Example.com"}])
    _edit(copper, "leads", lead, converted_contact_id=person["id"], converted_at=copper.clock())
    _edit(
        copper,
        "people",
        person,
        leads_converted_from=[{"lead_id": 94000001, "converted_timestamp": copper.clock()}],
    )
    history.incremental()

    forget = {
        f"copper-person:{doomed_person['id']}",
        f"copper-lead:{doomed_lead['id']}",
        f"copper:{company['id']}",
    }
    incremental = _snapshot(history, forget)
    scratch = _pipeline(tmp_path, monkeypatch, copper, "scratch")
    scratch.full_refresh()
    fresh = _snapshot(scratch, forget)

    assert history.user(f"copper-person:{lone['id']}")["email"] == "renamed.person@example.com"
    assert (
        history.user("copper-lead:94000001")["hull_id"]
        == history.user(f"copper-person:{person['id']}")["hull_id"]
    )
    assert len(fresh["users"]) > 40 and len(fresh["accounts"]) >= 4 and fresh["events"]
    assert incremental["accounts"] == fresh["accounts"]
    assert incremental["users"] == fresh["users"]
    assert incremental["events"] == fresh["events"]
