"""Asset checks run a step per asset (per profile job), and each is still its own result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from hull_planhat_pipelines.definitions import build_definitions
from hull_planhat_pipelines.resources import WarehouseResource
from hull_planhat_pipelines.settings import load_settings
from hull_planhat_pipelines.sync.copper.polling import COPPER_SINCE_TAG

PEOPLE = dg.AssetKey(["copper", "people"])
UNIQUE = dg.AssetCheckKey(PEOPLE, "unique_ids_per_partition")
DATES = dg.AssetCheckKey(PEOPLE, "dates_inside_partition")


@pytest.fixture
def defs() -> dg.Definitions:
    return build_definitions(load_settings())


def _steps(defs: dg.Definitions) -> dict[frozenset[dg.AssetCheckKey], dg.AssetChecksDefinition]:
    return {frozenset(d.check_keys): d for d in defs.asset_checks}


def test_each_asset_s_checks_share_one_step_and_the_profile_tables_share_one(
    defs: dg.Definitions,
) -> None:
    steps = _steps(defs)
    assert frozenset({UNIQUE, DATES}) in steps
    [hull] = [keys for keys in steps if any(k.asset_key.path[0] == "hull" for k in keys)]
    names = {(k.asset_key.to_user_string(), k.name) for k in hull}
    assert {
        ("hull/users", "unique_email"),
        ("hull/users", "unique_external_id"),
        ("hull/users", "account_exists"),
        ("hull/accounts", "unique_domain"),
        ("hull/accounts", "unique_external_id"),
        ("hull/accounts", "valid_owner"),
    } == names
    specs = {(s.asset_key.to_user_string(), s.name): s for s in steps[hull].check_specs}
    blocking = {name for name, spec in specs.items() if spec.blocking}
    assert blocking == {
        ("hull/users", "unique_email"),
        ("hull/users", "unique_external_id"),
        ("hull/accounts", "unique_external_id"),
    }
    # every check of the definitions is in exactly one step
    every = [key for keys in steps for key in keys]
    assert len(every) == len(set(every))


def _people_table(path: Path) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.execute("create schema copper")
        conn.execute(
            "create table copper.people as select * from (values"
            " (1, timestamptz '2025-03-01 10:00:00+00', date '2025-03-01'),"
            " (1, timestamptz '2025-03-01 11:00:00+00', date '2025-03-01'),"  # twice in a day
            " (2, timestamptz '2025-03-02 10:00:00+00', date '2025-03-02')"
            ") t(id, date_modified, partition_date)"
        )


def _run(
    defs: dg.Definitions, path: Path, checks: list[dg.AssetCheckKey]
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.checks(*checks),
        resources={**defs.resources, "warehouse": WarehouseResource(database=str(path))},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_one_step_reports_each_check_and_a_selected_check_runs_alone(
    defs: dg.Definitions, tmp_path: Path
) -> None:
    path = tmp_path / "warehouse.duckdb"
    _people_table(path)

    both = _run(defs, path, [UNIQUE, DATES])
    evaluations = {
        e.check_name: e for e in both.get_asset_check_evaluations() if e.asset_key == PEOPLE
    }
    assert set(evaluations) == {UNIQUE.name, DATES.name}
    assert not evaluations[UNIQUE.name].passed  # id 1 twice on 2025-03-01
    assert "|    1 |   2 |" in evaluations[UNIQUE.name].metadata["offending_sample"].value
    assert evaluations[DATES.name].passed
    assert evaluations[DATES.name].metadata["rows_checked"].value == 3
    assert len([e for e in both.all_events if e.is_step_success]) == 1  # one step, two results

    alone = _run(defs, path, [DATES])
    assert [(e.asset_key, e.check_name) for e in alone.get_asset_check_evaluations()] == [
        (PEOPLE, DATES.name)
    ]


def test_checks_over_a_warehouse_not_yet_written_pass_with_nothing_checked(
    defs: dg.Definitions, tmp_path: Path
) -> None:
    result = _run(defs, tmp_path / "missing.duckdb", [UNIQUE, DATES])
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 2
    assert all(e.passed and e.metadata["rows_checked"].value == 0 for e in evaluations)


def _people_checks_after(
    path: Path, written: list[tuple[int, str, str]], *, poll: bool = True
) -> dict[str, Any]:
    """The people checks in a run that first writes ``written`` rows (id, date_modified,
    partition_date) as the Copper asset would (fetched now), tagged as an incremental poll
    (``poll``) or not (a range run); ``written`` empty: checks alone."""
    from hull_planhat_pipelines.checks import build_copper_checks
    from hull_planhat_pipelines.clients.copper import COPPER_OBJECTS

    settings = load_settings()

    @dg.asset(key=PEOPLE)
    def people() -> None:
        with duckdb.connect(str(path)) as conn:
            for row in written:
                conn.execute("insert into copper.people values (?, ?::timestamptz, ?, now())", row)

    [checks] = build_copper_checks(settings, [COPPER_OBJECTS["people"]])
    result = dg.materialize(
        [people, checks],
        selection=dg.AssetSelection.all() if written else dg.AssetSelection.checks(UNIQUE, DATES),
        resources={"warehouse": WarehouseResource(database=str(path))},
        instance=dg.DagsterInstance.ephemeral(),
        tags={COPPER_SINCE_TAG: "1740787200"} if poll else None,
        raise_on_error=False,
    )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_after_a_poll_the_copper_checks_cover_the_rows_it_wrote_and_otherwise_the_table(
    tmp_path: Path,
) -> None:
    """A poll that writes a hundred rows is not made to group the whole table; a duplicate
    between a new row and a stored one is still found, and a range run or a check run alone
    sees the whole table (rows of a poll killed before its checks included)."""
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute("create schema copper")
        conn.execute(
            "create table copper.people as select * from (values"
            " (1, timestamptz '2025-03-01 10:00:00+00', date '2025-03-01',"
            "  timestamptz '2025-03-02 00:00:00+00'),"
            " (1, timestamptz '2025-03-01 11:00:00+00', date '2025-03-01',"
            "  timestamptz '2025-03-02 00:00:00+00'),"  # an old duplicate
            " (2, timestamptz '2025-03-02 10:00:00+00', date '2025-03-01',"
            "  timestamptz '2025-03-02 00:00:00+00')"  # an old misplaced row
            ") t(id, date_modified, partition_date, _fetched_at)"
        )

    fresh = _people_checks_after(path, [(3, "2025-03-03 10:00:00+00", "2025-03-03")])
    assert fresh[UNIQUE.name].passed and fresh[DATES.name].passed
    assert fresh[UNIQUE.name].metadata["rows_checked"].value == 1
    assert fresh[UNIQUE.name].metadata["scope"].value == "the rows this run wrote"

    twice = _people_checks_after(
        path,
        [(2, "2025-03-01 12:00:00+00", "2025-03-01"), (4, "2025-03-05 10:00:00+00", "2025-03-04")],
    )
    assert not twice[UNIQUE.name].passed  # the new id 2 beside the stored one, same day
    sample = twice[UNIQUE.name].metadata["offending_sample"].value
    assert "|    2 |   2 |" in sample and "|    1 |" not in sample
    assert not twice[DATES.name].passed  # id 4 dated outside its partition
    assert "|    4 |" in twice[DATES.name].metadata["offending_sample"].value

    ranged = _people_checks_after(path, [(5, "2025-03-06 10:00:00+00", "2025-03-06")], poll=False)
    assert ranged[UNIQUE.name].metadata["scope"].value == "the whole table"
    assert ranged[UNIQUE.name].metadata["rows_checked"].value == 7
    assert not ranged[UNIQUE.name].passed  # the old duplicate of id 1, out of the polls' scope

    alone = _people_checks_after(path, [])
    assert alone[UNIQUE.name].metadata["scope"].value == "the whole table"
    assert alone[UNIQUE.name].metadata["rows_checked"].value == 7
    assert "|    1 |   2 |" in alone[UNIQUE.name].metadata["offending_sample"].value
