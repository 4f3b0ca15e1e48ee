"""Segments: named DuckDB predicates from the configuration, evaluated over the profile tables.

Account segments see ``hull.accounts`` columns (``attributes`` as JSON, so
``attributes->>'copper/contact_type'`` works). User segments see ``hull.users`` columns plus
the columns of the user's account prefixed ``account_`` (``account_external_id``,
``account_domain``, ``account_attributes``, ``account_segments``, ...): account segments are
evaluated first. Each table gets a ``segments`` list column with the names of the predicates
that are true, in configuration order. A predicate that does not compile or fails raises
``SegmentError`` naming the segment. Predicates run with file and network access off
(``operator_sql``): a segment reads the profiles and nothing else.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from hull_planhat_pipelines.settings import SegmentSettings
from hull_planhat_pipelines.sync.canonical import canonical_hash
from hull_planhat_pipelines.sync.hull.batch import Batch, batch, ident, quote
from hull_planhat_pipelines.sync.hull.model import (
    STORE_COLUMNS,
    STORE_SQL_TYPES,
    Kind,
    empty_store,
    normalize_store,
)
from hull_planhat_pipelines.sync.operator_sql import lock_down

_ROW = "__row"


class SegmentError(ValueError):
    """A segment predicate that cannot be evaluated."""

    def __init__(self, kind: Kind, name: str, message: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} segment {name!r}: {message}")


def evaluate_segments(
    users: pd.DataFrame | None, accounts: pd.DataFrame | None, segments: SegmentSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(users, accounts)`` with their ``segments`` column (re)computed."""
    users = normalize_store(users, "user")
    accounts = normalize_store(accounts, "account")
    with batch() as work:
        lock_down(work.con)
        _load(work, "account", accounts)
        account_segments = _evaluate(work, "account", "accounts_v", segments.accounts)
        work.load(
            "acc_seg",
            pd.DataFrame({"segments": account_segments}).assign(**{_ROW: _rows(accounts)}),
            f"segments::varchar[] as segments, {_ROW}",
        )
        work.sql(
            "create temp table accounts_s as select a.* exclude (__row), s.segments"
            f" from accounts_v a join acc_seg s using ({_ROW})"
        )
        _load(work, "user", users)
        _users_view(work)
        user_segments = _evaluate(work, "user", "users_v", segments.users)
    return _with(users, user_segments), _with(accounts, account_segments)


def segments_hash(segments: SegmentSettings) -> str:
    """A digest of the segment definitions: a changed one re-evaluates membership even when no
    profile changed."""
    return canonical_hash(segments.model_dump())


def validate_segments(segments: SegmentSettings) -> None:
    """Compile every predicate against empty tables (for ``check-config``)."""
    evaluate_segments(empty_store("user"), empty_store("account"), segments)


def _rows(frame: pd.DataFrame) -> np.ndarray:
    return np.arange(len(frame), dtype="int64")


def _with(frame: pd.DataFrame, segments: list[list[str]]) -> pd.DataFrame:
    out = frame.copy()
    out["segments"] = pd.Series(segments, index=out.index, dtype=object)
    return out


def _load(work: Batch, kind: Kind, frame: pd.DataFrame) -> None:
    """The table as ``<kind>s_v``: contract columns typed (attributes as JSON), extra columns as
    they are, the previous ``segments`` dropped, and a row number to write results back."""
    extra = [c for c in frame.columns if c not in STORE_COLUMNS[kind] and c != "segments"]
    typed = [
        f"{ident(c)}::{'JSON' if c == 'attributes' else STORE_SQL_TYPES[c]} as {ident(c)}"
        for c in STORE_COLUMNS[kind]
    ]
    select = ", ".join([*typed, *(ident(c) for c in extra), ident(_ROW)])
    work.load(f"{kind}s_v", frame.assign(**{_ROW: _rows(frame)}), select)


def _users_view(work: Batch) -> None:
    """Users plus their account's columns prefixed ``account_``."""
    columns = [
        row[0]
        for row in work.con.execute("select column_name from (describe accounts_s)").fetchall()
        if row[0] != "hull_id"
    ]
    prefixed = ", ".join(f"a.{ident(c)} as {ident('account_' + c)}" for c in columns)
    work.sql(
        "alter table users_v rename to users_base;"
        f"create temp table users_v as select u.*, {prefixed} from users_base u"
        " left join accounts_s a on a.hull_id = u.account_hull_id"
    )


def _check(work: Batch, kind: Kind, source: str, name: str, predicate: str) -> None:
    """Run one predicate alone over ``source``; SegmentError naming it if that fails."""
    query = f"select count(*) from {source} where (\n{predicate}\n)"
    try:
        if len(work.con.extract_statements(query)) != 1:
            raise SegmentError(kind, name, "the predicate must be one expression")
        work.con.execute(query).fetchall()
    except duckdb.Error as exc:
        raise SegmentError(kind, name, str(exc).splitlines()[0]) from None


def _evaluate(work: Batch, kind: Kind, view: str, predicates: dict[str, str]) -> list[list[str]]:
    """Segment names per row, in row order."""
    for name, predicate in predicates.items():  # compile errors, without scanning rows
        _check(work, kind, f"(select * from {view} limit 0)", name, predicate)
    cases = ", ".join(
        f"case when (\n{predicate}\n) then {quote(name)} end"
        for name, predicate in predicates.items()
    )
    listed = f"list_filter([{cases}], lambda x: x is not null)" if predicates else "[]::varchar[]"
    try:
        result = work.frame(f"select {listed} as segments from {view} order by {_ROW}")
    except duckdb.Error as exc:  # a runtime error (a failed cast): find whose
        for name, predicate in predicates.items():
            _check(work, kind, view, name, predicate)
        raise SegmentError(kind, ", ".join(predicates), str(exc).splitlines()[0]) from None
    return [list(s) for s in result["segments"]]
