"""Settling unnamed bulk items against a snapshot (pure)."""

from __future__ import annotations

import pandas as pd

from hull_planhat_pipelines.sync.planhat.settlement import (
    DROPPED,
    MAX_DROPPED_RETRIES,
    NOT_APPLIED_REASON,
    UNCONFIRMED,
    Settlement,
    settle,
)

T0 = pd.Timestamp("2026-01-01T10:00:00Z")


def _payloads(*keys: str, fingerprint: str = "f1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": list(keys),
            "fingerprint": [fingerprint] * len(keys),
            "company_external_id": ["C"] * len(keys),
        },
        index=[10 + i for i in range(len(keys))],
    )


def _history(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"key": k, "status": s, "fingerprint": f, "delivered_at": T0 + pd.Timedelta(minutes=m)}
            for k, s, f, m in rows
        ]
    )


def _settle_a(
    history: pd.DataFrame, snapshot_at: pd.Timestamp, written: pd.Timestamp
) -> Settlement:
    """``a``'s payload settled against a snapshot holding it, last written at ``written``."""
    return settle(
        "endusers", _payloads("a"), history, {"a"}, snapshot_at, written_at={"a": written}
    )


def test_present_is_confirmed_absent_is_dropped_and_sent_again_others_go_as_usual() -> None:
    history = _history(
        [("a", UNCONFIRMED, "f1", 0), ("b", UNCONFIRMED, "f1", 0), ("c", "created", "f0", 0)]
    )
    result = settle(
        "endusers",
        _payloads("a", "b", "c"),
        history,
        {"a"},
        T0 + pd.Timedelta(hours=1),
        written_at={"a": T0},  # written as the attempt's answer came
    )
    assert result.confirmed["key"].tolist() == ["a"]
    assert result.dropped["key"].tolist() == ["b"]
    assert sorted(result.send["key"]) == ["b", "c"]
    assert result.send.index.tolist() == [11, 12]
    assert [(e.event, e.reason) for e in result.events] == [
        ("outgoing.user.error", "Dropped by Planhat: company not in Planhat")
    ]


def test_no_newer_snapshot_holds_the_record_and_a_changed_one_is_sent() -> None:
    history = _history([("a", UNCONFIRMED, "f1", 0), ("b", UNCONFIRMED, "f0", 0)])
    held = settle("endusers", _payloads("a"), history, set(), T0)
    assert held.send.empty and held.dropped.empty and held.confirmed.empty
    changed = settle(
        "endusers", _payloads("b"), history, {"b"}, T0 + pd.Timedelta(hours=1), written_at={"b": T0}
    )
    assert changed.send["key"].tolist() == ["b"] and changed.confirmed.empty


def test_retries_are_bounded_then_skipped_until_the_company_is_delivered_again() -> None:
    drops = [("a", DROPPED, "f1", i) for i in range(MAX_DROPPED_RETRIES)]
    history = _history([*drops, ("a", UNCONFIRMED, "f1", 10)])
    later = T0 + pd.Timedelta(hours=1)
    skipped = settle("endusers", _payloads("a"), history, set(), later)
    assert skipped.send.empty and skipped.dropped.empty
    assert skipped.events[0].event == "outgoing.user.skip"
    assert "skipped until it or its account changes" in skipped.events[0].reason
    again = settle(
        "endusers", _payloads("a"), history, set(), later, {"C": T0 + pd.Timedelta(minutes=5)}
    )
    assert again.send["key"].tolist() == ["a"]
    edited = settle("endusers", _payloads("a", fingerprint="f2"), history, set(), later)
    assert edited.send["key"].tolist() == ["a"]


def test_a_key_present_on_a_record_not_written_since_the_attempt_is_not_confirmed() -> None:
    """Presence proves nothing for an update (its record held the key before) or for an email
    another company's enduser holds: only a write after the attempt began confirms it."""
    history = _history(
        [
            ("upd", "sent", "f0", 0),  # delivered before: Planhat wrote it then
            ("upd", UNCONFIRMED, "f1", 5),
            ("other", UNCONFIRMED, "f1", 30),
            ("unknown", UNCONFIRMED, "f1", 5),
            ("landed", "sent", "f0", 0),
            ("landed", UNCONFIRMED, "f1", 5),
        ]
    )
    written = {
        "upd": T0 - pd.Timedelta(seconds=1),  # the earlier delivery's write
        "other": T0,  # another record, written 30 minutes before the attempt
        "unknown": None,  # no updatedAt
        "landed": T0 + pd.Timedelta(minutes=4, seconds=59),  # during the attempt
    }
    result = settle(
        "endusers",
        _payloads("upd", "other", "unknown", "landed"),
        history,
        set(written),
        T0 + pd.Timedelta(hours=1),
        written_at=written,
    )
    assert result.confirmed["key"].tolist() == ["landed"]
    assert result.not_applied["key"].tolist() == ["upd", "other", "unknown"]
    assert result.dropped.empty
    assert sorted(result.send["key"]) == ["other", "unknown", "upd"]
    assert {(e.event, e.object_id, e.reason) for e in result.events} == {
        ("outgoing.user.error", key, NOT_APPLIED_REASON) for key in ("upd", "other", "unknown")
    }


def test_not_applied_attempts_count_toward_the_retry_bound() -> None:
    drops = [("a", DROPPED, "f1", i) for i in range(MAX_DROPPED_RETRIES)]
    history = _history([*drops, ("a", UNCONFIRMED, "f1", 10)])
    result = _settle_a(history, T0 + pd.Timedelta(hours=1), T0 - pd.Timedelta(days=1))
    assert result.send.empty and result.confirmed.empty
    assert [e.event for e in result.events] == ["outgoing.user.skip"]


def test_a_write_after_the_attempts_answer_is_someone_elses() -> None:
    """A user's edit in Planhat an hour later, or weeks after the item was skipped, is not
    the attempt's write: it never confirms it."""
    history = _history([("a", UNCONFIRMED, "f1", 0)])
    for later in (pd.Timedelta(hours=1), pd.Timedelta(weeks=3)):
        result = _settle_a(history, T0 + later + pd.Timedelta(hours=1), T0 + later)
        assert result.confirmed.empty
        assert result.not_applied["key"].tolist() == ["a"]


def test_a_resend_after_a_drop_is_judged_by_its_own_window_not_the_drop_row() -> None:
    """Settlement commits a drop just before it sends again; Planhat's clock a little behind
    ours stamps the resend's write before that row. The window is the resend's: from the
    attempt before it."""
    history = pd.DataFrame(
        [
            {"key": "a", "status": UNCONFIRMED, "fingerprint": "f1", "delivered_at": T0},
            {
                "key": "a",
                "status": DROPPED,
                "fingerprint": "f1",
                "delivered_at": T0 + pd.Timedelta(hours=1),
            },
            {
                "key": "a",
                "status": UNCONFIRMED,
                "fingerprint": "f1",
                "delivered_at": T0 + pd.Timedelta(hours=1, seconds=1),
            },
        ]
    )
    result = _settle_a(
        history, T0 + pd.Timedelta(hours=2), T0 + pd.Timedelta(minutes=59, seconds=59.5)
    )
    assert result.confirmed["key"].tolist() == ["a"]
