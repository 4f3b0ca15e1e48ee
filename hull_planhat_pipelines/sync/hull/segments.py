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

import json
from collections.abc import Mapping
from typing import Any

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
        work.plan_for(max(len(users), len(accounts)))
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


_EXPRESSION_PARTS = frozenset(
    {"COLUMN_REF", "CONSTANT", "FUNCTION", "COMPARISON", "CONJUNCTION", "OPERATOR", "CASE"}
    | {"CAST", "BETWEEN", "COLLATE", "LAMBDA"}
)
"""What a predicate whose reads can be named is made of: one row's columns and functions of
them. A subquery, a window, ``*`` or ``COLUMNS(...)`` read other rows or unnamed columns."""

_ACCOUNT_COLUMNS = frozenset(c for c in STORE_COLUMNS["account"] if c != "hull_id") | {"segments"}
"""The account columns a user segment sees, each as ``account_<column>``."""


class _Unnamed(Exception):
    """A predicate reads something its parse tree does not name as a column."""


def account_columns_read(segments: SegmentSettings) -> frozenset[str] | None:
    """The columns of the user's account (``segments`` among them) the user predicates read;
    None when one reads what cannot be named (another row, a column pattern, the whole row).

    A user's membership depends on its account through these alone: an account change that
    leaves them as they were moves none of its users, which then need not be read again."""
    read: set[str] = set()
    with batch() as work:  # parsed only: nothing of the predicate runs
        for predicate in segments.users.values():
            try:
                tree = json.loads(
                    work.scalar("select json_serialize_sql(?)", [f"select ({predicate})"])
                )
                read |= _columns_of(tree)
            except (_Unnamed, duckdb.Error, KeyError, IndexError, TypeError, ValueError):
                return None
    return frozenset(read)


def _columns_of(tree: dict[str, Any]) -> set[str]:
    """The account columns one ``select (<predicate>)`` reads (``_Unnamed``: not one bare
    expression, or it reads something else than named columns)."""
    if tree["error"] or len(tree["statements"]) != 1:
        raise _Unnamed
    node = tree["statements"][0]["node"]
    bare = (
        node["type"] == "SELECT_NODE"
        and node["from_table"]["type"] == "EMPTY"
        and len(node["select_list"]) == 1
        and not node["modifiers"]
        and not node["cte_map"]["map"]
        and not node["group_expressions"]
        and node.get("where_clause") is None
        and node.get("having") is None
        and node.get("qualify") is None
    )
    if not bare:
        raise _Unnamed
    read: set[str] = set()
    _walk(node["select_list"][0], frozenset(), read)
    return read


def _walk(node: Any, parameters: frozenset[str], read: set[str]) -> None:
    """Add to ``read`` the account columns under ``node`` (``parameters``: lambda parameters
    in scope, which are not columns)."""
    if isinstance(node, list):
        for item in node:
            _walk(item, parameters, read)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("class")
    if kind is None:  # a part of an expression that is not one (its arguments' wrapper)
        for value in node.values():
            _walk(value, parameters, read)
        return
    if kind not in _EXPRESSION_PARTS:
        raise _Unnamed
    if kind == "LAMBDA":
        _walk(node["expr"], parameters | _lambda_parameters(node["lhs"]), read)
        return
    if kind == "COLUMN_REF":
        column = _account_column(node["column_names"], parameters)
        if column:
            read.add(column)
        return
    for value in node.values():
        _walk(value, parameters, read)


def _lambda_parameters(lhs: dict[str, Any]) -> frozenset[str]:
    """The names a lambda binds (``lambda x: ...``, ``lambda x, i: ...``); one that shadows a
    column hides which reads are the column's."""
    names = lhs["arguments"] if lhs.get("class") == "FUNCTION" else [{"expression": lhs}]
    bound = []
    for argument in names:
        expression = argument.get("expression", argument)
        if expression.get("class") != "COLUMN_REF" or len(expression["column_names"]) != 1:
            raise _Unnamed
        bound.append(expression["column_names"][0].lower())
    if any(_is_column(name) for name in bound):
        raise _Unnamed
    return frozenset(bound)


def _is_column(name: str) -> bool:
    return name in STORE_COLUMNS["user"] or (
        name.startswith("account_") and name.removeprefix("account_") in _ACCOUNT_COLUMNS
    )


def _account_column(names: list[str], parameters: frozenset[str]) -> str | None:
    """The account column a column reference reads (None: a user column or a lambda's
    parameter). ``users_v.x`` is the column ``x``; ``x.field`` a field of the column ``x``."""
    path = [name.lower() for name in names]
    if path[0] in parameters:  # a parameter, or a field of one
        return None
    if path[0] == "users_v" and len(path) > 1:
        path = path[1:]
    name = path[0]
    if not _is_column(name):
        raise _Unnamed
    if name in STORE_COLUMNS["user"]:
        return None
    return name.removeprefix("account_")


def moving_accounts(
    before: pd.DataFrame | None,
    stored: Mapping[str, object],
    after: pd.DataFrame,
    read: frozenset[str] | None,
) -> set[str]:
    """The accounts of ``after`` (their new rows, with their new ``segments``) whose users'
    membership may move: those whose columns in ``read`` (``account_columns_read``) differ
    from ``before`` (their rows as read, with the ``stored`` segments by ``hull_id``); every
    one when ``read`` is None, and any not read before."""
    if read is None or before is None or before.empty:
        return set(after["hull_id"])
    # rows as dicts: a label lookup per account (``.loc``) cost 50 us, 0.1 s at 2,000
    previous = {
        str(row["hull_id"]): row
        for row in before[[c for c in before.columns if c in read or c == "hull_id"]].to_dict(
            "records"
        )
    }  # the last row of a hull_id wins
    moving = set()
    for row in after.to_dict("records"):
        hull_id = str(row["hull_id"])
        old = previous.get(hull_id)
        if old is None:
            moving.add(hull_id)
            continue
        for column in read:
            was = stored.get(hull_id) if column == "segments" else old.get(column)
            if not _same(was, row.get(column)):
                moving.add(hull_id)
                break
    return moving


def _same(left: object, right: object) -> bool:
    """Equal as a predicate sees them (a list as its items, a missing value as NULL)."""
    sequences = (list, tuple, np.ndarray)
    if isinstance(left, sequences) or isinstance(right, sequences):
        return (
            isinstance(left, sequences)
            and isinstance(right, sequences)
            and len(left) == len(right)
            and all(_same(a, b) for a, b in zip(left, right, strict=True))
        )
    missing = [bool(pd.isna(value)) for value in (left, right)]  # None, NaN, NaT, NA
    if any(missing):
        return all(missing)
    return bool(left == right)


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
