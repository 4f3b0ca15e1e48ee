"""Apply a sync's changes to the profile store (pure, deterministic).

Only the touched profiles go through DuckDB; the untouched rows of a million-profile store
stay where they are. Existing rows keep their order and are replaced in place; new profiles
are appended in hull_id order; shells merged into another profile disappear.
``updated_at`` becomes ``now`` for every changed profile (``created_at`` too for new ones).
A profile's ``attributes`` are rewritten as canonical JSON: sorted keys, no nulls.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from hull_planhat_pipelines.sync.hull.batch import batch
from hull_planhat_pipelines.sync.hull.changes import Changes, ProfileStore
from hull_planhat_pipelines.sync.hull.model import (
    DOMAIN_CLAIM,
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
    upserts, claims = changes.upserts(kind), changes.claims(kind)
    links = changes.links if kind == "user" else changes.links.iloc[0:0]
    changed_ids = changes.touched_ids(kind)
    if not len(changed_ids) and not removed:
        return frame
    kept = frame[~frame["hull_id"].isin(removed)] if removed else frame
    touched = kept[kept["hull_id"].isin(changed_ids)]
    rows = _changed_rows(kind, touched, upserts, claims, links, now)
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


def _changed_rows(
    kind: Kind,
    touched: pd.DataFrame,
    upserts: pd.DataFrame,
    claims: pd.DataFrame,
    links: pd.DataFrame,
    now: pd.Timestamp,
) -> pd.DataFrame:
    """The full new rows of touched and new profiles, computed in DuckDB."""
    other = DOMAIN_CLAIM[kind]
    is_user = kind == "user"
    with batch() as work:
        work.load_store(kind, touched, attributes=True)
        work.load("up", upserts[["hull_id", "attribute", "value"]])
        work.load("cl", claims[["hull_id", "claim", "value"]])
        work.load("lk", links[["user_hull_id", "account_hull_id"]])
        work.sql(
            "create temp table ids as select hull_id from up union select hull_id from cl"
            " union select user_hull_id from lk;"
            # the kept values of touched profiles, then the upserted ones (nulls clear)
            "create temp table attrs as select * from ("
            " select s.hull_id, j.key as attribute, j.value::varchar as value"
            f" from s_{kind} s, json_each(s.attributes) j where j.type <> 'NULL')"
            " anti join up using (hull_id, attribute)"
            " union all select hull_id, attribute, value from up where value is not null;"
            "create temp table obj as select hull_id, '{' || array_to_string(list_transform("
            "list_sort(list({'k': attribute, 'v': value})),"
            " lambda e: to_json(e.k)::varchar || ':' || e.v), ',') || '}' as attributes"
            " from attrs group by hull_id;"
            "create temp table anon as select hull_id, list_sort(list(value)) as added"
            " from cl where claim = 'anonymous_id' group by hull_id"
        )
        # gone before the rows cross into pandas: a first load's upserts, twice over, made
        # the sync's peak beside them
        work.drop("attrs", "up")
        account = (
            "case when lk.user_hull_id is not null then lk.account_hull_id"
            " else s.account_hull_id end as account_hull_id,"
        )
        rows = work.frame(
            f"select ids.hull_id, coalesce(co.value, s.{other}) as {other},"
            " coalesce(s.external_id, ce.value) as external_id,"
            " list_concat(coalesce(s.anonymous_ids, []), coalesce(anon.added, []))"
            f" as anonymous_ids, {account if is_user else ''}"
            " coalesce(obj.attributes, '{}') as attributes,"
            " coalesce(s.created_at, $1) as created_at, $1 as updated_at"
            f" from ids left join s_{kind} s using (hull_id)"
            f" left join cl co on co.hull_id = ids.hull_id and co.claim = '{other}'"
            " left join cl ce on ce.hull_id = ids.hull_id and ce.claim = 'external_id'"
            " left join anon on anon.hull_id = ids.hull_id"
            " left join obj on obj.hull_id = ids.hull_id"
            f" {'left join lk on lk.user_hull_id = ids.hull_id' if is_user else ''}"
            " order by ids.hull_id",
            [now.to_pydatetime()],
        )
    rows["anonymous_ids"] = [list(ids) for ids in rows["anonymous_ids"]]
    for column in ("created_at", "updated_at"):
        rows[column] = _utc_column(rows[column])
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
