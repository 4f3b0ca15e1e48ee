"""Operator metric query rows -> Planhat dimension data items.

A metric's item is keyed ``<dimension_id>:<model>:<external_id>:<date>`` and re-sent only when
its value changed since its last delivery (a metric re-sent unchanged would pile up data
points). The queries themselves run in the warehouse layer; this module reads their answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pandas as pd

from hull_planhat_pipelines.settings import MetricSettings
from hull_planhat_pipelines.sync.batching import is_missing
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat import shared
from hull_planhat_pipelines.sync.planhat.fingerprints import utc_timestamp

METRIC_NOT_A_NUMBER = "Value is not a number"
METRIC_BAD_DATE = "Invalid date"
METRIC_DUPLICATE = "Duplicate row for this key"
METRIC_QUERY_FAILED = "Metric query failed"
METRIC_COLUMNS = ("external_id", "value")


def _metric_subject(model: str) -> str:
    """The log events of a metric name what it measures: ``outgoing.account`` (companies),
    ``outgoing.user`` (endusers), else ``outgoing.job``."""
    return "outgoing." + {"Company": "account", "EndUser": "user"}.get(model, "job")


def _metric_dates(values: pd.Series, default: str) -> list[str | None]:
    """ISO dates with ms and ``Z`` (midnight for a plain date); a missing cell takes
    ``default``; None where the cell holds something that is no date."""
    text = shared.iso_ms(values).tolist()
    missing = [is_missing(v) or (isinstance(v, str) and not v.strip()) for v in values]
    return [default if gone else iso for iso, gone in zip(text, missing, strict=True)]


def default_date(now: dt.datetime) -> str:
    """The date of a row without one: today, UTC midnight."""
    return utc_timestamp(now).normalize().strftime("%Y-%m-%dT%H:%M:%S.000Z")


def metric_key(metric: MetricSettings, external_id: str, date: str) -> str:
    """An item's delivery key: one per metric, record and day."""
    return f"{metric.dimension_id}:{metric.model}:{external_id}:{date}"


def _metric_cells(
    rows: pd.DataFrame, metric: MetricSettings, now: dt.datetime
) -> list[tuple[str | None, Any, str | None]]:
    """Each row's external id (as text), raw value and ISO date (today when it has none)."""
    missing = [c for c in METRIC_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"metric {metric.dimension_id!r}: query lacks {', '.join(missing)}")
    dates = _metric_dates(
        rows["date"] if "date" in rows.columns else pd.Series([None] * len(rows)),
        default_date(now),
    )
    external_ids = [shared.as_text(v) for v in rows["external_id"].tolist()]
    return list(zip(external_ids, rows["value"].tolist(), dates, strict=True))


def metric_keys(
    answers: Sequence[tuple[MetricSettings, shared.QueryAnswer]], now: dt.datetime
) -> set[str]:
    """The keys the answers' items would be sent under: the only fingerprints a payload run
    compares with. A key carries its day, so the fingerprints of every day ever sent grow
    without end; reading them all would make each cycle cost the history."""
    keys: set[str] = set()
    for metric, answer in answers:
        checked = answer.checked(METRIC_COLUMNS)
        if checked.rows is None:
            continue
        for external_id, _, date in _metric_cells(metric_rows(checked.rows), metric, now):
            if external_id is not None and date is not None:
                keys.add(metric_key(metric, external_id, date))
    return keys


def metric_payloads(
    rows: pd.DataFrame,
    metric: MetricSettings,
    now: dt.datetime,
    *,
    fingerprints: pd.DataFrame | None = None,
    force: bool = False,
    unchanged: int = 0,
) -> shared.Payloads:
    """Dimension data items from one metric's query rows (``external_id, value[, date]``).

    ``date`` defaults to today (UTC midnight), so a rerun the same day has the same key.
    With ``fingerprints`` only items whose value changed since their last delivery are kept
    (a metric re-sent unchanged every run would pile up data points). ``unchanged``: rows of
    the answer left out before, as sent unchanged (counted as such). Columns:
    ``PAYLOAD_COLUMNS`` + ``dimension_id``, ``model``, ``external_id``, ``date``, ``value``.
    """
    extra = ("dimension_id", "model", "external_id", "date", "value")
    skip_name = f"{_metric_subject(metric.model)}.skip"
    events: list[SyncEvent] = []
    candidates: list[dict[str, Any]] = []
    for position, (external_id, raw_value, date) in enumerate(_metric_cells(rows, metric, now)):
        value = shared.as_number(raw_value)
        problem = (
            shared.NO_EXTERNAL_ID
            if external_id is None
            else METRIC_NOT_A_NUMBER
            if value is None
            else METRIC_BAD_DATE
            if date is None
            else None
        )
        if problem is not None:
            events.append(
                shared.skip_event(
                    skip_name,
                    "metric",
                    external_id,
                    problem,
                    dimension_id=metric.dimension_id,
                    model=metric.model,
                    value=None if value is not None else repr(raw_value)[:100],
                )
            )
            continue
        item = {
            "dimensionId": metric.dimension_id,
            "value": value,
            "externalId": external_id,
            "model": metric.model,
            "date": date,
        }
        candidates.append(
            {
                "key": metric_key(metric, external_id, date),
                "hull_id": None,
                "payload": item,
                "present": [],
                "order": position,
                "dimension_id": metric.dimension_id,
                "model": metric.model,
                "external_id": external_id,
                "date": date,
                "value": value,
            }
        )
    return shared.select_upserts(
        candidates,
        events,
        target=shared.METRICS,
        subject=_metric_subject(metric.model),
        object_type="metric",
        duplicate=METRIC_DUPLICATE,
        extra=extra,
        fields=(),
        fingerprints=fingerprints,
        force=force,
        counts={
            "dimension_id": metric.dimension_id,
            "model": metric.model,
            "rows": len(rows) + unchanged,
        },
        id_column="external_id",
        unchanged_before=unchanged,
    )


def metric_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """A metric query's columns: ``external_id``, ``value`` and ``date`` when the query has
    one. A ValueError names the required columns it lacks."""
    shared.require_columns(frame, METRIC_COLUMNS)
    return frame[[c for c in (*METRIC_COLUMNS, "date") if c in frame.columns]]


def all_metric_payloads(
    answers: Sequence[tuple[MetricSettings, shared.QueryAnswer]],
    now: dt.datetime,
    *,
    fingerprints: pd.DataFrame | None = None,
    force: bool = False,
) -> shared.Payloads:
    """Every configured metric from its query's answer: a failed query is logged
    (``outgoing.*.error``) and the others still go."""
    frames: list[pd.DataFrame] = []
    events: list[SyncEvent] = []
    for metric, answer in answers:
        checked = answer.checked(METRIC_COLUMNS)
        if checked.rows is None:
            events.append(
                SyncEvent(
                    event=f"{_metric_subject(metric.model)}.error",
                    object_type="metric",
                    object_id=metric.dimension_id,
                    reason=METRIC_QUERY_FAILED,
                    details={"error": checked.error, "model": metric.model},
                )
            )
            continue
        payloads, skipped = metric_payloads(
            metric_rows(checked.rows),
            metric,
            now,
            fingerprints=fingerprints,
            force=force,
            unchanged=checked.unchanged,
        )
        frames.append(payloads)
        events += skipped
    if not frames:
        return shared.empty_payloads(
            ("dimension_id", "model", "external_id", "date", "value")
        ), events
    return pd.concat(frames, ignore_index=True), events
