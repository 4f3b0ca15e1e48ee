"""When to poll: the incremental Copper plan and schedule intervals (pure, no Dagster)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from hull_planhat_pipelines.sync.canonical import canonical_json

COPPER_SINCE_TAG = "hull_planhat/copper_since"
COPPER_UNTIL_TAG = "hull_planhat/copper_until"
"""Run tags (Unix seconds) that make a Copper run incremental: only records dated in
[since, until] are fetched and upserted by id; the rest of their partitions stays. ``since`` is
one number for every object or a JSON object per object name."""


def parse_window(tags: dict[str, str], object_name: str) -> tuple[int | None, int | None, bool]:
    """``(since, until, incremental)`` for ``object_name`` from a run's tags (pure).

    An incremental run that names other objects but not this one replaces nothing of it:
    it is then given ``since=None`` with ``incremental`` true and fetches its whole window."""
    raw = tags.get(COPPER_SINCE_TAG)
    if raw is None:
        return None, None, False
    until_raw = tags.get(COPPER_UNTIL_TAG)
    until = int(until_raw) if until_raw else None
    value = json.loads(raw)
    if isinstance(value, dict):
        found = value.get(object_name)
        return (int(found) if found is not None else None), until, True
    return int(value), until, True


@dataclass
class CopperCursor:
    """What the sensor has seen: newest modification per object and the activity scan times."""

    newest: dict[str, int] = field(default_factory=dict)
    activities_checked: int | None = None
    activities_rescanned: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> CopperCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            newest={k: int(v) for k, v in data.get("newest", {}).items()},
            activities_checked=data.get("activities_checked"),
            activities_rescanned=data.get("activities_rescanned"),
        )

    def dumps(self) -> str:
        return canonical_json(
            {
                "newest": self.newest,
                "activities_checked": self.activities_checked,
                "activities_rescanned": self.activities_rescanned,
            }
        )


@dataclass(frozen=True)
class PlannedRun:
    """One Copper run: its objects, the days its records are dated in (which decide its
    partitions) and, for an incremental run, the window to fetch and upsert.

    ``since`` maps each object to the first second to fetch (inclusive); ``until`` is the last
    (``None``: up to the end of the run's partitions). Without ``since`` the run replaces its
    partitions whole (a first start, "fetch all")."""

    objects: tuple[str, ...]
    first_day: dt.date
    last_day: dt.date
    reason: str
    since: dict[str, int] | None = None
    until: int | None = None

    def run_key(self, fingerprint: str) -> str:
        return f"copper:{'+'.join(self.objects)}:{self.first_day}:{self.last_day}:{fingerprint}"


def _day(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date()


def _day_start(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())


def _day_end(day: dt.date) -> int:
    return _day_start(day + dt.timedelta(days=1)) - 1


def plan_incremental_runs(
    cursor: CopperCursor,
    newest: dict[str, int | None],
    activities_changed: bool,
    now: int,
    *,
    start_date: dt.date,
    rescan_days: int,
    rescan_minutes: int,
    horizon_days: int = 0,
) -> tuple[list[PlannedRun], CopperCursor]:
    """Which records changed since the cursor, and the advanced cursor (pure).

    A changed object needs the records modified from its previous newest change on (that
    second included: Copper filters inclusively), upserted into the partitions of those days;
    on the first tick the day of the newest change. Activities have no sort: a cheap "anything
    dated since the last check?" question covers new ones, and a trailing window of days is
    re-fetched every ``rescan_minutes`` for back-dated ones, together with the
    ``horizon_days`` ahead (activities planned in the future: asking "anything dated up to the
    horizon?" would always say yes, so they come with the re-scan, not with every tick).

    Copper's dates are whole seconds: a record saved in the very second the previous tick
    asked, after its answer, carries the same newest date and would look unchanged. So a newest
    date that fell within a second of the previous tick is fetched once more by the next one.
    """
    today = _day(now)
    clamp = lambda day: max(day, start_date)  # noqa: E731
    changed: dict[str, tuple[dt.date, dt.date]] = {}
    since: dict[str, int] = {}
    advanced = CopperCursor(
        dict(cursor.newest), cursor.activities_checked, cursor.activities_rescanned
    )
    last_tick = cursor.activities_checked
    racing: list[str] = []
    for name, value in newest.items():
        if value is None:
            continue
        previous = cursor.newest.get(name)
        if previous is None or value > previous:
            first = _day(previous) if previous is not None else _day(value)
            changed[name] = (clamp(first), clamp(_day(value)))
            since[name] = previous if previous is not None else _day_start(_day(value))
            advanced.newest[name] = value
        elif value == previous and last_tick is not None and last_tick - 1 <= previous <= last_tick:
            racing.append(name)
    runs: list[PlannedRun] = []
    if changed:
        first_day = min(first for first, _ in changed.values())
        last_day = max(last for _, last in changed.values())
        runs.append(
            PlannedRun(tuple(sorted(changed)), first_day, last_day, "modified records", since=since)
        )
    if racing:
        day = clamp(_day(max(cursor.newest[name] for name in racing)))
        again = {name: cursor.newest[name] for name in racing}
        runs.append(
            PlannedRun(tuple(sorted(racing)), day, day, "same-second re-check", since=again)
        )
    rescan_due = (
        cursor.activities_rescanned is None
        or now - cursor.activities_rescanned >= rescan_minutes * 60
    )
    if rescan_due:
        first = clamp(today - dt.timedelta(days=rescan_days))
        last = clamp(today + dt.timedelta(days=horizon_days))
        runs.append(
            PlannedRun(
                ("activities",),
                first,
                last,
                "trailing activity re-scan",
                since={"activities": _day_start(first)},
                until=_day_end(last),
            )
        )
        advanced.activities_rescanned = now
    elif activities_changed:
        first = clamp(_day(cursor.activities_checked or now))
        runs.append(
            PlannedRun(
                ("activities",),
                first,
                clamp(today),
                "new activities",
                since={"activities": _day_start(first)},
                until=_day_end(clamp(today)),
            )
        )
    advanced.activities_checked = now
    return runs, advanced


def merge_runs(runs: list[PlannedRun], reason: str) -> PlannedRun | None:
    """The planned runs as one (pure): their objects, the days from the first to the last, each
    object's own ``since``, and the last second of the last day as ``until`` (no later than any
    run's own end for the objects that were planned: a modification is never dated ahead, and
    an activity run already reaches the last day). ``None`` when nothing was planned.

    The command line runs its poll as one Copper run, where the sensor requests one per reason:
    a sync pays one run's start-up however many reasons it found."""
    if not runs:
        return None
    if any(run.since is None for run in runs):
        raise ValueError("only incremental runs merge: a run without since replaces its years")
    since: dict[str, int] = {}
    for run in runs:
        for name, value in (run.since or {}).items():
            since[name] = min(value, since.get(name, value))
    objects = tuple(sorted({name for run in runs for name in run.objects}))
    last = max(run.last_day for run in runs)
    return PlannedRun(
        objects,
        min(run.first_day for run in runs),
        last,
        reason,
        since=since,
        until=_day_end(last),
    )
