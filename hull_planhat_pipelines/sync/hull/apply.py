"""Apply a sync's changes to the profile store (pure, deterministic).

The sync built the new rows of the profiles it rewrites (``Changes.user_rows``,
``account_rows``, against the store it was given: apply them to that store); here they take
their places, stamped, and the untouched rows of a million-profile store stay where they are.
Existing rows keep their order and are replaced in place; new profiles are appended in hull_id
order; shells merged into another profile disappear. ``updated_at`` becomes ``now`` for every
changed profile (``created_at`` too for new ones). A profile whose attributes changed has its
object written again (sorted keys, no nulls, the values it keeps as stored); one that only
gained a claim or a link keeps its stored text.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from hull_planhat_pipelines.sync.hull.changes import Changes, ProfileStore
from hull_planhat_pipelines.sync.hull.model import (
    EVENT_COLUMNS,
    STORE_COLUMNS,
    Kind,
    empty_events,
    normalize_store,
)


def apply_changes(store: ProfileStore, changes: Changes, now: dt.datetime) -> ProfileStore:
    """The store after ``changes``; ``now`` (timezone-aware) stamps the changed profiles."""
    moment = pd.Timestamp(now)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    merges = changes.merges
    return ProfileStore(
        users=_apply_kind(
            normalize_store(store.users, "user"),
            "user",
            changes,
            set(merges.loc[merges["kind"] == "user", "from_hull_id"]),
            moment,
        ),
        accounts=_apply_kind(
            normalize_store(store.accounts, "account"),
            "account",
            changes,
            set(merges.loc[merges["kind"] == "account", "from_hull_id"]),
            moment,
        ),
        events=_apply_events(store.events, changes.events, changes.removed_events),
    )


def _apply_kind(
    frame: pd.DataFrame, kind: Kind, changes: Changes, removed: set[str], now: pd.Timestamp
) -> pd.DataFrame:
    rewritten = changes.rows(kind)
    if rewritten.empty and not removed:
        return frame
    kept = frame[~frame["hull_id"].isin(removed)] if removed else frame
    touched = kept[kept["hull_id"].isin(rewritten["hull_id"])]
    rows = _stamped(kind, rewritten, touched, now)
    known = rows["hull_id"].isin(touched["hull_id"])
    updated = _replace_rows(kept, rows[known])
    new = rows[~known]
    if not new["hull_id"].is_monotonic_increasing:  # the SQL ordered them: no sort then
        new = new.sort_values("hull_id", kind="stable")
    if new.empty:
        return updated.reset_index(drop=True)
    if updated.empty:
        return new.reset_index(drop=True)
    return pd.concat([updated, new], ignore_index=True)


def _stamped(
    kind: Kind, rewritten: pd.DataFrame, touched: pd.DataFrame, now: pd.Timestamp
) -> pd.DataFrame:
    """The rewritten rows with their times (``updated_at`` now, ``created_at`` now for a new
    profile) and, where the sync left them as stored, their stored attributes."""
    rows = rewritten.copy()
    kept = rows["attributes"].isna()
    if kept.any():
        stored = dict(zip(touched["hull_id"], touched["attributes"], strict=True))
        missing = sorted(set(rows.loc[kept, "hull_id"]) - stored.keys())
        if missing:  # their attributes are in the store the changes were computed against
            raise ValueError(
                f"changes applied to another store than they were computed against: {kind}"
                f" profiles {missing[:5]} ({len(missing)} in all) are not in it"
            )
        rows.loc[kept, "attributes"] = [stored[h] for h in rows.loc[kept, "hull_id"]]
    created = _utc_column(rows["created_at"])
    rows["created_at"] = created.where(created.notna(), now)
    rows["updated_at"] = pd.Series(now, index=rows.index, dtype=created.dtype)
    return rows[STORE_COLUMNS[kind]]


def _utc_column(values: pd.Series) -> pd.Series:
    """In UTC, as ``to_datetime(utc=True)`` gives it; DuckDB's zone-aware column is converted
    as a column (``to_datetime`` looks at every value first: a second at a first load)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    return pd.to_datetime(values, utc=True)


def _replace_rows(frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the rows of the same hull_id replaced by ``rows`` (order kept). Touches
    only those positions: the rest of a million-row store is copied as arrays, not rebuilt."""
    if rows.empty:
        return frame
    positions = pd.Index(frame["hull_id"]).get_indexer(rows["hull_id"])
    columns = {}
    for column in frame.columns:
        if column not in rows.columns:
            columns[column] = frame[column]
            continue
        if frame[column].dtype == object:  # element by element: values may be lists
            values = frame[column].to_numpy(dtype=object, copy=True)
            for position, value in zip(positions, rows[column].tolist(), strict=True):
                values[position] = value
        else:
            values = frame[column].array.copy()
            values[positions] = rows[column].astype(frame[column].dtype).array
        columns[column] = pd.Series(values, index=frame.index, name=column)
    return pd.DataFrame(columns, index=frame.index)


def _apply_events(
    events: pd.DataFrame | None, changed: pd.DataFrame, removed: pd.DataFrame
) -> pd.DataFrame:
    """Events upserted by event id: a changed event replaces its row, a new one is appended,
    a removed one (its activity was deleted) leaves."""
    current = empty_events() if events is None else events
    if not removed.empty:
        current = current[~current["event_id"].isin(removed["event_id"])].reset_index(drop=True)
    if changed.empty:
        return current
    kept = current[~current["event_id"].isin(changed["event_id"])]
    if kept.empty:
        return changed[EVENT_COLUMNS].reset_index(drop=True)
    return pd.concat([kept, changed[EVENT_COLUMNS]], ignore_index=True)
