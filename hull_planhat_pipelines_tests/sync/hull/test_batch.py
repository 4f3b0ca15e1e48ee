"""Batch exports: ENUM-coded columns come back as text, in the order the stored values give."""

from __future__ import annotations

from hull_planhat_pipelines.sync.hull.batch import batch


def test_an_exported_table_is_ordered_by_its_values_not_by_their_codes() -> None:
    with batch() as work:
        # inserted so that the ENUM's codes (first seen first) disagree with the text order
        work.sql(
            "create table t as select * from (values ('b', 'x', 2), ('c', 'y', 1),"
            " ('a', 'x', 3), ('b', null, 1)) v(hull_id, claim, n)"
        )
        frame = work.export_table("t", ("hull_id", "claim"), ("hull_id", "n"))
        rows = list(frame.itertuples(index=False, name=None))
        assert rows == [("a", "x", 3), ("b", None, 1), ("b", "x", 2), ("c", "y", 1)]
        assert all(type(h) is str for h in frame["hull_id"])
        # the table stays (the caller drops it), and its copy-based sibling agrees
        assert work.export("select * from t order by hull_id, n", ("hull_id", "claim")).equals(
            frame
        )
