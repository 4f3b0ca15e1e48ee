"""The new rows of the profiles a sync rewrites, built in the sync's own batch.

A profile is rewritten when it gains an attribute change, a claim or (a user) another account.
Its new row is built where its changes already are: the stored row (``s_<kind>``), the stored
attributes diffing parsed (``cur_<kind>``, which keeps their stored text where the canonical
one differs; of the profiles with an upsert, the only ones whose attribute text is rewritten),
the upserts, the claims and the links. ``apply_changes`` then only stamps the times and puts
the rows in place. Built in a second batch, each rewritten profile's attributes were parsed
again and the upserts loaded back from pandas (a first load's million rows).
"""

from __future__ import annotations

import pandas as pd

from hull_planhat_pipelines.sync.hull.batch import Batch
from hull_planhat_pipelines.sync.hull.model import (
    DOMAIN_CLAIM,
    STORE_COLUMNS,
    Kind,
    empty_store,
)

REWRITE_COLUMNS: dict[Kind, list[str]] = {
    kind: [c for c in columns if c != "updated_at"] for kind, columns in STORE_COLUMNS.items()
}
"""A rewritten row: the store's columns but ``updated_at`` (the apply's ``now``);
``created_at`` is the stored one (NaT: a new profile), ``attributes`` None when this sync did
not change them (only a claim or a link changed): the stored text stays."""


def stage_rewrites(work: Batch, k: Kind) -> None:
    """``rewrite_<k>`` (``REWRITE_COLUMNS``, ordered by ``hull_id``) from the batch's
    ``upserts_<k>``, ``claims_<k>``, ``links``, ``s_<k>`` and the ``cur_<k>`` diffing left
    (the stored values of the profiles with an upsert; consumed here)."""
    other = DOMAIN_CLAIM[k]
    is_user = k == "user"
    work.sql(
        f"create or replace temp table _rw_ids as select hull_id from upserts_{k}"
        f" union select hull_id from claims_{k}"
        f"{' union select user_hull_id from links' if is_user else ''};"
        # the kept values of rewritten profiles as stored, then the upserted ones (nulls clear)
        "create or replace temp table _rw_attrs as select c.hull_id, c.attribute,"
        " coalesce(c.raw, c.value) as value"
        f" from cur_{k} c anti join upserts_{k} u using (hull_id, attribute)"
        f" union all select hull_id, attribute, value from upserts_{k} where value is not null;"
        "create or replace temp table _rw_obj as select hull_id, '{' || array_to_string("
        "list_transform(list_sort(list({'k': attribute, 'v': value})),"
        " lambda e: to_json(e.k)::varchar || ':' || e.v), ',') || '}' as attributes"
        " from _rw_attrs group by hull_id;"
        "drop table _rw_attrs;"
        "create or replace temp table _rw_anon as select hull_id, list_sort(list(value)) as added"
        f" from claims_{k} where claim = 'anonymous_id' group by hull_id"
    )
    account = (
        "case when lk.user_hull_id is not null then lk.account_hull_id"
        " else s.account_hull_id end as account_hull_id,"
    )
    work.sql(
        f"create or replace temp table rewrite_{k} as select ids.hull_id,"
        f" coalesce(co.value, s.{other}) as {other},"
        " coalesce(s.external_id, ce.value) as external_id,"
        " list_concat(coalesce(s.anonymous_ids, []), coalesce(anon.added, []))"
        f" as anonymous_ids, {account if is_user else ''}"
        # changed (or new): rebuilt; otherwise left as stored
        " case when obj.hull_id is not null then obj.attributes"
        f" when ids.hull_id in (select hull_id from upserts_{k}) or s.hull_id is null"
        " then '{}' end as attributes,"
        " s.created_at"
        f" from _rw_ids ids left join s_{k} s using (hull_id)"
        f" left join claims_{k} co on co.hull_id = ids.hull_id and co.claim = '{other}'"
        f" left join claims_{k} ce on ce.hull_id = ids.hull_id and ce.claim = 'external_id'"
        " left join _rw_anon anon on anon.hull_id = ids.hull_id"
        " left join _rw_obj obj on obj.hull_id = ids.hull_id"
        f" {'left join links lk on lk.user_hull_id = ids.hull_id' if is_user else ''}"
        " order by ids.hull_id"
    )
    work.drop("_rw_ids", "_rw_obj", "_rw_anon", f"cur_{k}")


def export_rewrites(work: Batch, k: Kind) -> pd.DataFrame:
    """``rewrite_<k>`` as a frame (the table leaves the batch)."""
    rows = work.frame(f"select * from rewrite_{k}")
    work.drop(f"rewrite_{k}")
    rows["anonymous_ids"] = [list(ids) for ids in rows["anonymous_ids"]]
    rows["attributes"] = rows["attributes"].astype(object).where(rows["attributes"].notna(), None)
    return rows[REWRITE_COLUMNS[k]]


def empty_rewrites(k: Kind) -> pd.DataFrame:
    return empty_store(k)[REWRITE_COLUMNS[k]]
