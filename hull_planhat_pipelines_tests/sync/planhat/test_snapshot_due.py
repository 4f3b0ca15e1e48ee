"""When a sync lists Planhat again: on the interval, or once a delivery created records or
left outcomes in doubt."""

import datetime as dt

from hull_planhat_pipelines.sync.planhat.snapshot_due import SnapshotAge, snapshot_due

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _age(minutes_ago: float | None, *, written: bool = False) -> SnapshotAge:
    taken = None if minutes_ago is None else NOW - dt.timedelta(minutes=minutes_ago)
    return SnapshotAge(taken_at=taken, unread_writes=written)


def test_a_recent_snapshot_nothing_wrote_past_is_not_taken_again() -> None:
    assert snapshot_due(_age(10), NOW, 60, full=False) is None
    assert snapshot_due(_age(59.9), NOW, 60, full=False) is None


def test_a_snapshot_is_due_when_old_missing_written_past_or_asked_in_full() -> None:
    assert snapshot_due(_age(60), NOW, 60, full=False) == "older than 60 min"
    assert snapshot_due(_age(None), NOW, 60, full=False) == "no snapshot yet"
    assert snapshot_due(_age(1, written=True), NOW, 60, full=False) == (
        "records created or in doubt since the last snapshot"
    )
    assert snapshot_due(_age(1), NOW, 60, full=True) == "full sync"
