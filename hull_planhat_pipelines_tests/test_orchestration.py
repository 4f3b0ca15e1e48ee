"""The incremental poll's planning and the schedules' timing, without a server."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from hull_planhat_pipelines.orchestration import (
    build_planhat_fetch_sensor,
    copper_partitions,
    copper_window_tags,
    copper_years_ahead,
    planhat_fetch_job,
)
from hull_planhat_pipelines.settings import load_settings
from hull_planhat_pipelines.sync.copper.polling import (
    CopperCursor,
    PlannedRun,
    merge_runs,
    parse_window,
    plan_incremental_runs,
)

START = dt.date(2024, 1, 1)
NOW = int(dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC).timestamp())
DAY = 86_400


def _plan(cursor: CopperCursor, newest: dict, activities_changed: bool = False, now: int = NOW):
    return plan_incremental_runs(
        cursor,
        newest,
        activities_changed,
        now,
        start_date=START,
        rescan_days=7,
        rescan_minutes=60,
    )


def test_first_tick_fetches_the_newest_day_and_rescans_activities() -> None:
    runs, cursor = _plan(CopperCursor(), {"leads": NOW - 60, "people": None})
    assert [(r.objects, r.first_day, r.last_day) for r in runs] == [
        (("leads",), dt.date(2026, 11, 23), dt.date(2026, 11, 23)),
        (("activities",), dt.date(2026, 11, 16), dt.date(2026, 11, 23)),
    ]
    day = int(dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp())
    assert runs[0].since == {"leads": day}  # the newest change's whole day
    assert runs[1].since == {"activities": day - 7 * DAY} and runs[1].until == day + DAY - 1
    assert cursor.newest == {"leads": NOW - 60}
    assert cursor.activities_rescanned == NOW and cursor.activities_checked == NOW


def test_only_changed_objects_and_days_are_requested() -> None:
    cursor = CopperCursor(
        newest={"leads": NOW - 3 * DAY, "people": NOW - 100},
        activities_checked=NOW - 300,
        activities_rescanned=NOW - 600,
    )
    runs, advanced = _plan(cursor, {"leads": NOW - 10, "people": NOW - 100})
    assert [(r.objects, r.first_day, r.last_day) for r in runs] == [
        (("leads",), dt.date(2026, 11, 20), dt.date(2026, 11, 23))
    ]
    # only the records modified from the previous newest change on (that second included)
    assert runs[0].since == {"leads": NOW - 3 * DAY} and runs[0].until is None
    assert advanced.newest == {"leads": NOW - 10, "people": NOW - 100}


def test_an_unchanged_source_requests_nothing_and_a_repeated_tick_is_harmless() -> None:
    cursor = CopperCursor(
        newest={"leads": NOW - 100}, activities_checked=NOW - 300, activities_rescanned=NOW - 600
    )
    runs, advanced = _plan(cursor, {"leads": NOW - 100})
    assert runs == []
    again, _ = _plan(advanced, {"leads": NOW - 100}, now=NOW + 300)
    assert again == []


def test_new_activities_and_the_trailing_rescan() -> None:
    cursor = CopperCursor(activities_checked=NOW - 300, activities_rescanned=NOW - 600)
    runs, _ = _plan(cursor, {}, activities_changed=True)
    assert [(r.objects, r.first_day, r.reason) for r in runs] == [
        (("activities",), dt.date(2026, 11, 23), "new activities")
    ]
    later = CopperCursor(activities_checked=NOW - 300, activities_rescanned=NOW - 3600)
    runs, advanced = _plan(later, {})
    assert [(r.first_day, r.reason) for r in runs] == [
        (dt.date(2026, 11, 16), "trailing activity re-scan")
    ]
    assert advanced.activities_rescanned == NOW


def test_days_before_the_start_date_clamp_to_the_first_partition() -> None:
    old = int(dt.datetime(2023, 6, 1, tzinfo=dt.UTC).timestamp())
    runs, _ = _plan(CopperCursor(newest={"companies": old - DAY}), {"companies": old})
    assert runs[0].first_day == START and runs[0].last_day == START


def test_cursor_round_trips() -> None:
    cursor = CopperCursor({"leads": 5}, 6, 7)
    assert CopperCursor.parse(cursor.dumps()) == cursor
    assert CopperCursor.parse(None) == CopperCursor()


@pytest.mark.parametrize("minutes", [5, 7, 180, 300, 1440])
def test_planhat_snapshots_follow_any_interval_from_5_to_1440_minutes(
    minutes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANHAT_API_TOKEN", "token")
    monkeypatch.setenv("PLANHAT_TENANT_TOKEN", "tenant")
    base = load_settings()
    planhat = base.planhat.model_copy(update={"fetch_interval_minutes": minutes})
    settings = base.model_copy(update={"planhat": planhat})
    clock = [float(NOW)]
    sensor = build_planhat_fetch_sensor(settings, planhat_fetch_job(), clock=lambda: clock[0])
    assert sensor.minimum_interval_seconds == minutes * 60

    def tick() -> dg.RunRequest:
        return sensor(dg.build_sensor_context())

    first = tick()
    assert first.partition_key is None  # a full snapshot: nothing to choose
    clock[0] += 1  # a tick within the same interval asks for the same run (its key)
    assert tick().run_key == first.run_key
    clock[0] += minutes * 60
    assert tick().run_key != first.run_key


def test_the_rescan_reaches_the_activity_horizon_ahead() -> None:
    cursor = CopperCursor(activities_checked=NOW - 300, activities_rescanned=NOW - 3600)
    runs, _ = plan_incremental_runs(
        cursor,
        {},
        False,
        NOW,
        start_date=START,
        rescan_days=7,
        rescan_minutes=60,
        horizon_days=365,
    )
    assert [(r.objects, r.first_day, r.last_day) for r in runs] == [
        (("activities",), dt.date(2026, 11, 16), dt.date(2027, 11, 23))
    ]


def test_a_newest_change_in_the_second_of_the_last_tick_is_fetched_once_more() -> None:
    """A save in the very second the previous tick asked carries the same newest date."""
    cursor = CopperCursor(
        newest={"leads": NOW - 300, "people": NOW - 3 * DAY},
        activities_checked=NOW - 300,
        activities_rescanned=NOW,
    )
    runs, advanced = _plan(cursor, {"leads": NOW - 300, "people": NOW - 3 * DAY})
    assert [(r.objects, r.first_day, r.last_day, r.reason) for r in runs] == [
        (("leads",), dt.date(2026, 11, 23), dt.date(2026, 11, 23), "same-second re-check")
    ]
    assert runs[0].since == {"leads": NOW - 300}
    again, _ = _plan(advanced, {"leads": NOW - 300, "people": NOW - 3 * DAY}, now=NOW + 300)
    assert again == []  # once


def test_copper_partitions_are_years_from_the_start_to_the_horizon() -> None:
    base = load_settings()
    copper = base.copper.model_copy(
        update={"start_date": dt.date(2024, 3, 15), "activity_horizon_days": 365}
    )
    settings = base.model_copy(update={"copper": copper})
    now = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
    keys = copper_partitions(settings).get_partition_keys(current_time=now)
    # the start date's year up to the year of the horizon's day (2027-11-23): four partitions
    # where days were 1,349 (and months 45)
    assert keys == ["2024", "2025", "2026", "2027"]
    late = dt.datetime(2026, 12, 31, 12, tzinfo=dt.UTC)  # the horizon reaches 2027 from any day
    assert copper_partitions(settings).get_partition_keys(current_time=late)[-1] == "2027"
    assert copper_years_ahead(0) == 0 and copper_years_ahead(1) == 1
    assert copper_years_ahead(365) == 1 and copper_years_ahead(366) == 2


def test_window_tags_round_trip_per_object() -> None:
    tags = copper_window_tags(dt.date(2026, 11, 3), dt.date(2026, 12, 1), {"leads": 5}, 9)
    assert tags["dagster/asset_partition_range_start"] == "2026"
    assert tags["dagster/asset_partition_range_end"] == "2026"
    spanning = copper_window_tags(dt.date(2025, 12, 30), dt.date(2027, 1, 2), None, None)
    assert spanning["dagster/asset_partition_range_start"] == "2025"
    assert spanning["dagster/asset_partition_range_end"] == "2027"
    assert parse_window(tags, "leads") == (5, 9, True)
    assert parse_window(tags, "people") == (None, 9, True)
    whole = copper_window_tags(dt.date(2026, 1, 9), dt.date(2026, 2, 1), None, None)
    assert parse_window(whole, "leads") == (None, None, False)
    assert parse_window(copper_window_tags(START, START, 7, None), "x") == (7, None, True)


def test_the_command_line_runs_what_was_planned_as_one_run() -> None:
    cursor = CopperCursor(
        newest={"people": NOW - 2 * DAY}, activities_checked=NOW - 300, activities_rescanned=0
    )
    runs, _ = _plan(cursor, {"people": NOW - 10})
    merged = merge_runs(runs, "poll")
    assert merged is not None and merged.reason == "poll"
    assert merged.objects == ("activities", "people")
    # each object keeps its own window; the days span both runs, the end is the last day's
    assert merged.since == {"people": NOW - 2 * DAY, "activities": runs[1].since["activities"]}
    assert merged.first_day == min(r.first_day for r in runs)
    assert merged.last_day == max(r.last_day for r in runs)
    end_of_last_day = int(
        dt.datetime.combine(merged.last_day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
    )
    assert merged.until == end_of_last_day - 1
    assert merge_runs([], "poll") is None
    with pytest.raises(ValueError, match="only incremental runs merge"):
        merge_runs([PlannedRun(("leads",), START, START, "fetch all")], "poll")
