"""The configuration file is a contract: the example loads as it stands, errors name the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from hull_planhat_pipelines.cli import main
from hull_planhat_pipelines.settings import (
    ConfigError,
    default_config_path,
    load_settings,
    parse_settings,
)
from hull_planhat_pipelines.warehouse.planhat_queries import run_metric_sql

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "examples" / "hull_planhat.yaml"


@pytest.fixture
def example() -> dict:
    return yaml.safe_load(default_config_path().read_text())


def test_packaged_configuration_is_the_agreed_example(example: dict) -> None:
    settings = parse_settings(example)
    assert settings.copper.identity.person.external_id == "custom:User ID"
    assert settings.copper.attributes.company["custom:ARR"] == "arr"
    assert settings.planhat.metrics[0].model == "Company"
    assert settings.destinations[0].method == "POST"
    assert settings.segments.users["Customers"].startswith("email is not null")


@pytest.mark.skipif(not EXAMPLE.exists(), reason="the shared example is not beside the project")
def test_the_shared_example_loads_exactly_as_it_stands() -> None:
    example, packaged = load_settings(EXAMPLE), load_settings(default_config_path())
    sandbox_only = {
        "destinations": True,
        "copper": {"requests_per_minute"},
        "planhat": {"requests_per_minute": True, "metrics": {"__all__": {"sql"}}},
    }
    assert example.model_dump(exclude=sandbox_only) == packaged.model_dump(exclude=sandbox_only)
    assert example.copper.requests_per_minute == 180
    assert [d.name for d in example.destinations] == [d.name for d in packaged.destinations]
    assert [m.dimension_id for m in example.planhat.metrics] == [
        m.dimension_id for m in packaged.planhat.metrics
    ]


METRIC_DATA = """
create schema hull; create schema copper_current;
create table hull.accounts (hull_id varchar, external_id varchar, anonymous_ids varchar[]);
insert into hull.accounts values
  ('a1', 'ACC1', ['copper:1']),
  ('a2', 'ACC2', ['copper:2', 'copper:3', 'planhat:p2']),  -- merged: two companies
  ('a3', 'ACC3', ['copper:4', 'copper:4']),                 -- an id held twice
  ('a4', null, ['copper:5']),                               -- not in Planhat
  ('a5', 'ACC5', []),
  ('a6', 'ACC6', null),
  ('a7', 'ACC7', ['copper:7']),                             -- two profiles, one external id
  ('a8', 'ACC7', ['copper:8']),
  ('a9', 'ACC9', ['copper:10', 'copper:1']);                -- a company claimed twice
create table copper_current.opportunities (id bigint, company_id bigint,
  monetary_value double, status varchar);
insert into copper_current.opportunities values
  (1, 1, 100, 'Open'), (2, 1, 50, 'Open'), (3, 2, 10, 'Open'), (4, 3, 5, 'Open'),
  (5, 3, 1000, 'Won'), (6, 4, 7, 'Open'), (7, 5, 9, 'Open'), (8, 6, 11, 'Open'),
  (9, null, 13, 'Open'), (10, 7, 1, 'Open'), (11, 8, 2, 'Open'), (12, 10, 3, 'Open'),
  (13, 2, null, 'Open');
"""


@pytest.mark.skipif(not EXAMPLE.exists(), reason="the shared example is not beside the project")
def test_the_packaged_metric_queries_return_the_shared_examples_rows() -> None:
    """The packaged metric SQL may be faster than the example's (a join on unnested ids, not a
    ``list_contains`` nested loop), never different: same rows on the same data."""
    example, packaged = load_settings(EXAMPLE), load_settings(default_config_path())
    for ours, theirs in zip(packaged.planhat.metrics, example.planhat.metrics, strict=True):
        rows = []
        for metric in (ours, theirs):
            conn = duckdb.connect()
            conn.execute(METRIC_DATA)
            frame = run_metric_sql(conn, metric.sql)
            rows.append(sorted(frame.itertuples(index=False, name=None), key=str))
            conn.close()
        assert rows[0] == rows[1]
        assert len(rows[0]) >= 5  # the data exercises the query


@pytest.mark.parametrize(
    ("path", "value", "key_path"),
    [
        (("copper", "identity", "lead", "emial"), "x", "copper.identity.lead.emial"),
        (("copper", "start_date"), "not a date", "copper.start_date"),
        (("copper", "link_person_to_account"), "perhaps", "copper.link_person_to_account"),
        (("planhat", "batch_size"), 5001, "planhat.batch_size"),
        (("planhat", "batch_size"), 0, "planhat.batch_size"),
        (("planhat", "fetch_interval_minutes"), 4, "planhat.fetch_interval_minutes"),
        (("planhat", "fetch_interval_minutes"), 1441, "planhat.fetch_interval_minutes"),
        (
            ("planhat", "metrics", 0, "dimension_id"),
            "open pipeline",
            "planhat.metrics.0.dimension_id",
        ),
        (("planhat", "metrics", 0, "model"), "Opportunity", "planhat.metrics.0.model"),
        (("destinations", 0, "method"), "DELETE", "destinations.0.method"),
        (("destinations", 0, "batch_size"), 10, "destinations.0"),
        (("destinations", 0, "path"), "conversations", "destinations.0.path"),
        (("surprise",), 1, "surprise"),
        (
            ("planhat", "incoming", "enduser_attributes"),
            {"_id": "id"},
            "planhat.incoming.enduser_attributes",
        ),
    ],
)
def test_a_bad_key_or_value_names_its_path(
    example: dict, path: tuple, value: object, key_path: str
) -> None:
    data = copy.deepcopy(example)
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, "test.yaml")
    assert caught.value.key_path == key_path
    assert key_path in str(caught.value)


def test_bulk_destinations_may_batch_and_single_record_ones_may_not(example: dict) -> None:
    data = copy.deepcopy(example)
    data["destinations"][0].update(method="PUT", path="/conversations", batch_size=5000)
    assert parse_settings(data).destinations[0].is_bulk
    data["destinations"][0].update(path="/companies/{external_id}", batch_size=1)
    assert not parse_settings(data).destinations[0].is_bulk
    data["destinations"][0].update(path="/companies/{id}")
    with pytest.raises(ConfigError, match="placeholder"):
        parse_settings(data)


def test_check_config_prints_what_it_configures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(default_config_path())]) == 0
    out = capsys.readouterr().out
    assert "partitions from 2024-01-01" in out
    assert "conversations (POST /conversations)" in out


def test_check_config_exits_2_with_the_key_path(
    tmp_path: Path, example: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    example["planhat"]["batch_size"] = 6000
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(example))
    assert main(["check-config", str(path)]) == 2
    assert "planhat.batch_size" in capsys.readouterr().err


def test_unreadable_and_malformed_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("copper: [unclosed")
    with pytest.raises(ConfigError, match="<yaml>"):
        load_settings(broken)


@pytest.mark.parametrize(
    ("record", "claim", "field", "key_path"),
    [
        ("lead", "email", "title", "copper.identity.lead.email"),
        ("person", "email", "custom:Work Email", "copper.identity.person.email"),
        ("company", "domain", "website", "copper.identity.company.domain"),
        ("company", "external_id", "name", "copper.identity.company.external_id"),
    ],
)
def test_identity_fields_come_from_the_allow_list(
    tmp_path: Path,
    example: dict,
    capsys: pytest.CaptureFixture[str],
    record: str,
    claim: str,
    field: str,
    key_path: str,
) -> None:
    example["copper"]["identity"][record][claim] = field
    path = tmp_path / "identity.yaml"
    path.write_text(yaml.safe_dump(example))
    assert main(["check-config", str(path)]) == 2
    assert key_path in capsys.readouterr().err
    with pytest.raises(ConfigError) as caught:
        parse_settings(example)
    assert caught.value.key_path == key_path


def test_custom_fields_listed_as_identity_capable_may_feed_any_claim(example: dict) -> None:
    example["copper"]["identity"]["lead"]["email"] = "custom:Work Email"
    example["copper"]["identity_custom_fields"] = ["Work Email", "User ID", "Account ID"]
    settings = parse_settings(example)
    assert settings.copper.identity.lead.email == "custom:Work Email"
    example["copper"]["identity_custom_fields"] = ["Work Email"]  # User ID no longer listed
    with pytest.raises(ConfigError) as caught:
        parse_settings(example)
    assert caught.value.key_path == "copper.identity.person.external_id"


@pytest.mark.parametrize(
    ("path", "value", "key_path", "message"),
    [
        (
            ("segments", "accounts", "Customer accounts"),
            "atributes->>'copper/contact_type' = 'Customer'",
            "segments.accounts.Customer accounts",
            "atributes",
        ),
        (
            ("segments", "users", "Customers"),
            "(select count(*) from read_csv('/etc/passwd')) > 0",
            "segments.users.Customers",
            "disabled by configuration",
        ),
        (
            ("planhat", "metrics", 0, "sql"),
            "select external_id, 1 as amount from hull.accounts",
            "planhat.metrics.0.sql",
            "no column value",
        ),
        (
            ("planhat", "metrics", 0, "sql"),
            "select external_id, 1 as value from hull.accounts; select 1",
            "planhat.metrics.0.sql",
            "one SELECT statement",
        ),
        (
            ("planhat", "activity_queries"),
            [{"name": "usage", "sql": "copy (select * from hull.users) to 'users.csv'"}],
            "planhat.activity_queries.0.sql",
            "must be a SELECT, not COPY",
        ),
        (
            ("planhat", "activity_queries"),
            [{"name": "usage", "sql": "select event_id as activity_id from hull.events"}],
            "planhat.activity_queries.0.sql",
            "no column action",
        ),
        (
            ("destinations", 0, "source_sql"),
            "copy (select * from hull.users) to 'users.csv'",
            "destinations.0.source_sql",
            "must be a SELECT, not COPY",
        ),
        (
            ("destinations", 0, "source_sql"),
            "select e.event_id from hull.events e join copper_current.people p on p.idd = 1",
            "destinations.0.source_sql",
            "idd",
        ),
    ],
)
def test_check_config_compiles_every_query_against_the_table_schemas(
    tmp_path: Path,
    example: dict,
    capsys: pytest.CaptureFixture[str],
    path: tuple,
    value: Any,
    key_path: str,
    message: str,
) -> None:
    target = example
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    config = tmp_path / "sql.yaml"
    config.write_text(yaml.safe_dump(example))
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{key_path}: " in err and message in err
    assert not (tmp_path / "users.csv").exists()
