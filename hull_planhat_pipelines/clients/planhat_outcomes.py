"""Per-record outcomes of Planhat writes, read from response bodies.

A bulk upsert answers with counts, key lists and error lists, not one line per item, and an
enduser tied to no company is silently dropped. This module ties every sent item to exactly one
outcome and is conservative: an item is reported applied only when a key entry or a count
accounts for it; anything in doubt is reported not delivered (and so retried by the next run).
Pure functions over the sent items and the decoded body; no HTTP here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hull_planhat_pipelines.sync.canonical import canonical_json

OutcomeStatus = Literal[
    "created", "updated", "unchanged", "error", "ignored", "sent", "unconfirmed", "confirmed"
]
DELIVERED: frozenset[str] = frozenset({"created", "updated", "unchanged", "sent", "confirmed"})
"""``confirmed``: an item the answer did not name, later found in a Planhat snapshot."""

NOT_APPLIED = "not applied by Planhat (no company?)"
MATCH_FIELDS = ("_id", "sourceId", "externalId", "email")
"""Planhat's keyables in its documented order; the order decides which one ties an entry."""
DISCRIMINATORS = ("companyId", "companyExternalId")
"""Not keys, but an enduser's ``externalId`` is unique only per company: disagreeing here rules a
candidate out."""
ERROR_LISTS = ("createdErrors", "updatedErrors", "permissionErrors", "errors")
BULK_KEYS = frozenset(
    {"created", "updated", "nonupdates", "insertsKeys", "updatesKeys", "upsertedIds"}
    | set(ERROR_LISTS)
)
_MESSAGE_KEYS = ("error", "message", "msg", "reason")


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What happened to the item sent at ``index`` of one request.

    ``key`` is the Planhat ``_id`` when the response (or the item itself) names it, else None.
    ``detail`` is the piece of the response tied to this item (error object or key entry).
    """

    index: int
    key: str | None
    status: OutcomeStatus
    error: str | None = None
    detail: Any = None

    @property
    def delivered(self) -> bool:
        return self.status in DELIVERED


@dataclass(frozen=True)
class BulkResult:
    """A bulk PUT's answer as one outcome per item sent, in request order."""

    path: str
    http_status: int | None
    sent: int
    created: int = 0
    updated: int = 0
    nonupdates: int = 0
    errors: int = 0
    outcomes: tuple[RecordOutcome, ...] = ()
    attempts: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    """The counts and batch-level message of the response, for logs and excerpts."""

    @property
    def reconciled(self) -> bool:
        """Planhat's counts add up to the items sent (else some were silently dropped)."""
        return self.created + self.updated + self.nonupdates + self.errors == self.sent

    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for outcome in self.outcomes:
            totals[outcome.status] = totals.get(outcome.status, 0) + 1
        return totals


@dataclass(frozen=True)
class AnalyticsResult:
    """An analytics POST's answer. Activities have no per-item outcome: every item is "sent"."""

    path: str
    http_status: int | None
    sent: int
    processed: int | None = None
    """Items Planhat says it accepted (dimension data only; None for activities)."""
    errors: int = 0
    outcomes: tuple[RecordOutcome, ...] = ()
    attempts: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def is_bulk_body(body: Any) -> bool:
    return isinstance(body, Mapping) and bool(BULK_KEYS & body.keys())


def error_message(entry: Any) -> str:
    """The human text of one error entry, whatever its (undocumented) shape."""
    if isinstance(entry, Mapping):
        for name in _MESSAGE_KEYS:
            value = entry.get(name)
            if value:
                return value if isinstance(value, str) else _dump(value)
        return _dump(entry)
    return str(entry)


def _dump(value: Any, limit: int = 300) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))[:limit]


def _count(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _entries(body: Mapping[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    return list(value) if isinstance(value, list) else []


def _norm(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return text.casefold() if name == "email" else text


class _ItemIndex:
    """Sent items by key value; ties a response entry to the best unclaimed item."""

    def __init__(
        self,
        items: Sequence[Mapping[str, Any]],
        fields: tuple[str, ...] = MATCH_FIELDS,
        discriminators: tuple[str, ...] = DISCRIMINATORS,
    ) -> None:
        self.items = items
        self.fields = fields
        self.checked = fields + discriminators
        self.claimed: set[int] = set()
        self._by: dict[tuple[str, str], list[int]] = {}
        self._by_content: dict[str, list[int]] | None = None
        for position, item in enumerate(items):
            for name in fields:
                value = _norm(name, item.get(name))
                if value is not None:
                    self._by.setdefault((name, value), []).append(position)

    def claim_position(self, position: Any) -> int | None:
        valid = isinstance(position, int) and 0 <= position < len(self.items)
        if not valid or position in self.claimed:
            return None
        self.claimed.add(position)
        return position

    def claim_equal(self, ref: Mapping[str, Any]) -> int | None:
        """The first unclaimed item equal to ``ref`` (an error entry echoing the item whole)."""
        if self._by_content is None:
            self._by_content = {}
            for position, item in enumerate(self.items):
                self._by_content.setdefault(canonical_json(item), []).append(position)
        for position in self._by_content.get(canonical_json(ref), ()):
            if position not in self.claimed:
                self.claimed.add(position)
                return position
        return None

    def claim(self, ref: Mapping[str, Any]) -> int | None:
        """The unclaimed item ``ref`` names (the first sent among equally close ones)."""
        best = self._closest(ref)
        if not best:
            return None
        self.claimed.add(best[0])
        return best[0]

    def claim_closest(self, ref: Mapping[str, Any]) -> list[int]:
        """Every unclaimed item ``ref`` names equally well: an error that cannot tell two sent
        items apart fails both (a retry is harmless, a false success is not)."""
        best = self._closest(ref)
        self.claimed.update(best)
        return best

    def _closest(self, ref: Mapping[str, Any]) -> list[int]:
        """The first key (in Planhat's order) with agreeing candidates decides; among those,
        the ones sharing most fields with ``ref``, in request order."""
        for name in self.fields:
            value = _norm(name, ref.get(name))
            if value is None:
                continue
            scored: list[tuple[int, int]] = []
            for position in self._by.get((name, value), ()):
                item = self.items[position]
                if position in self.claimed or not self._agrees(ref, item):
                    continue
                scored.append((sum(1 for k, v in ref.items() if item.get(k) == v), position))
            if scored:
                top = max(score for score, _ in scored)
                return [position for score, position in scored if score == top]
        return []

    def _agrees(self, ref: Mapping[str, Any], item: Mapping[str, Any]) -> bool:
        for name in self.checked:
            theirs = ref.get(name)
            if theirs is None or theirs == "":
                continue
            mine = _norm(name, item.get(name))
            if mine is not None and mine != _norm(name, theirs):
                return False
        return True


def _error_ref(entry: Any) -> Mapping[str, Any] | None:
    """The item an error entry names: ``{"item": {...}, "error": ...}`` or the item inline."""
    if not isinstance(entry, Mapping):
        return None
    item = entry.get("item")
    if isinstance(item, Mapping):
        return item
    inline = {k: v for k, v in entry.items() if k not in _MESSAGE_KEYS and k != "index"}
    return inline if any(_norm(n, inline.get(n)) for n in MATCH_FIELDS) else None


def _item_id(item: Mapping[str, Any]) -> str | None:
    value = item.get("_id")
    return str(value) if value else None


def _batch_message(body: Mapping[str, Any], http_status: int | None) -> str:
    if any(body.get(name) for name in _MESSAGE_KEYS):
        return f"Planhat refused the batch ({http_status}): {error_message(body)}"
    return f"Planhat refused the batch ({http_status})"


def _tie_error(index: _ItemIndex, entry: Any) -> list[int]:
    """Strongest tie first: an explicit position, the item echoed whole, then its keyables."""
    if not isinstance(entry, Mapping):
        return []
    position = index.claim_position(entry.get("index"))
    ref = _error_ref(entry)
    if position is None and ref is not None:
        position = index.claim_equal(ref)
    if position is not None:
        return [position]
    return index.claim_closest(ref) if ref is not None else []


def _tie_keys(
    index: _ItemIndex, items: Sequence[Mapping[str, Any]], entries: list[Any]
) -> dict[int, tuple[str | None, Any]]:
    """Items named by ``insertsKeys``/``updatesKeys`` entries -> (Planhat ``_id``, entry)."""
    tied: dict[int, tuple[str | None, Any]] = {}
    for entry in entries:
        ref = entry if isinstance(entry, Mapping) else {"_id": entry}
        position = index.claim(ref)
        if position is not None:
            tied[position] = (_norm("_id", ref.get("_id")) or _item_id(items[position]), entry)
    return tied


def _split_matched(
    entries: int, counts: Mapping[str, int], modified: Any
) -> Callable[[str | None], OutcomeStatus]:
    """Updated or unchanged, for an item an ``updatesKeys`` entry names.

    Whether that list also names the matched-but-unchanged items is undocumented: when it is
    longer than ``updated`` it does, and ``modified`` (ids really changed) tells them apart.
    """
    if entries <= counts["updated"] or counts["nonupdates"] == 0:
        return lambda key: "updated"
    if counts["updated"] == 0:
        return lambda key: "unchanged"
    if isinstance(modified, list):
        changed = {str(value) for value in modified}
        return lambda key: "updated" if key in changed else "unchanged"
    return lambda key: "sent"


def reconcile_bulk(
    items: Sequence[Mapping[str, Any]], body: Any, http_status: int | None
) -> tuple[list[RecordOutcome], dict[str, int]]:
    """One outcome per sent item from a bulk upsert body (status 200, 206, 400 or 403).

    Returns the outcomes in request order and Planhat's counts. Ties, strongest first: an
    explicit ``index`` in an error entry; the item an error echoes; the keyables of an error's
    ``item`` or of an ``insertsKeys``/``updatesKeys`` entry; then, for items no entry names, the
    counts, which cover the rest only as a whole (see ``_settle``).
    """
    body = body if isinstance(body, Mapping) else {}
    index = _ItemIndex(items)
    outcomes: dict[int, RecordOutcome] = {}
    untied_errors: list[str] = []
    error_entries = [entry for name in ERROR_LISTS for entry in _entries(body, name)]
    for entry in error_entries:
        positions = _tie_error(index, entry)
        if not positions:
            untied_errors.append(error_message(entry))
        message = error_message(entry)
        if len(positions) > 1:
            message += f" (the error fits {len(positions)} items of the request: all failed)"
        for position in positions:
            item_id = _item_id(items[position])
            outcomes[position] = RecordOutcome(position, item_id, "error", message, entry)
    counts = {
        "created": _count(body, "created", len(_entries(body, "insertsKeys"))),
        "updated": _count(body, "updated", len(_entries(body, "updatesKeys"))),
        "nonupdates": _count(body, "nonupdates", 0),
        "errors": len(error_entries),
    }
    created = _tie_keys(index, items, _entries(body, "insertsKeys"))
    matched = _tie_keys(index, items, _entries(body, "updatesKeys"))
    for position, (key, entry) in created.items():
        outcomes[position] = RecordOutcome(position, key, "created", None, entry)
    split = _split_matched(len(_entries(body, "updatesKeys")), counts, body.get("modified"))
    for position, (key, entry) in matched.items():
        outcomes[position] = RecordOutcome(position, key, split(key), None, entry)
    tied = Counter(outcomes[p].status for p in (*created, *matched))
    updated = max(counts["updated"] - tied["updated"], 0)
    unchanged = max(counts["nonupdates"] - tied["unchanged"], 0)
    unsplit = min(tied["sent"], updated)  # matched items of unknown kind use up either count
    slots: dict[OutcomeStatus, int] = {
        "created": max(counts["created"] - tied["created"], 0),
        "updated": updated - unsplit,
        "unchanged": max(unchanged - (tied["sent"] - unsplit), 0),
    }
    remaining = [p for p in range(len(items)) if p not in outcomes]
    status, message = _settle(len(remaining), slots, untied_errors, body, http_status)
    for position in remaining:
        outcomes[position] = RecordOutcome(position, _item_id(items[position]), status, message)
    return [outcomes[p] for p in range(len(items))], counts


def _settle(
    remaining: int,
    slots: dict[OutcomeStatus, int],
    untied_errors: list[str],
    body: Mapping[str, Any],
    http_status: int | None,
) -> tuple[OutcomeStatus, str | None]:
    """The one outcome every item no entry named gets, from what the counts leave over.

    Errors tied to no item put all of them in doubt: error. A refused batch (4xx) with nothing
    applied: error. Counts covering all of them with one kind: that kind; with several kinds:
    "sent" (applied, kind unknown). None applied: "ignored". Some applied: "unconfirmed" (which
    ones is unknown): the next delivery settles each against a Planhat snapshot instead of
    sending them all again.
    """
    free = sum(slots.values())
    if untied_errors:
        shown = "; ".join(dict.fromkeys(untied_errors))[:300]
        return "error", f"Planhat reported {len(untied_errors)} error(s) tied to no item: {shown}"
    if free == 0 and http_status is not None and http_status >= 400:
        return "error", _batch_message(body, http_status)
    if free >= remaining:
        kinds = [kind for kind, count in slots.items() if count]
        return (kinds[0], None) if len(kinds) == 1 else ("sent", None)
    if free == 0:
        return "ignored", NOT_APPLIED
    return "unconfirmed", (
        f"not named by Planhat's answer: it applied {free} of {remaining} items and dropped "
        "the rest (no company?); settled against the next snapshot"
    )


METRIC_DISCRIMINATORS = ("dimensionId", "model", "date")


def reconcile_metrics(
    items: Sequence[Mapping[str, Any]], body: Any
) -> tuple[list[RecordOutcome], int | None, int]:
    """Dimension data: ``{"processed": N, "errors": [{"item": ..., "error": ...}]}``.

    Error entries are tied to the sent items by content. The others are "sent" when
    ``processed`` accounts for them (or the body says nothing). When ``processed`` falls short
    with no error naming the rest, Planhat stopped part-way through the array, which it handles
    in order: the first ``processed`` of them landed ("sent", never posted again: a second post
    would count a data point twice), and only the ones after them, which cannot have landed,
    are errors to send again. Errors tied to no item leave every unnamed item in doubt: errors.
    """
    body = body if isinstance(body, Mapping) else {}
    entries = _entries(body, "errors")
    processed = _count(body, "processed", -1)
    index = _ItemIndex(items, ("externalId",), METRIC_DISCRIMINATORS)
    outcomes: dict[int, RecordOutcome] = {}
    untied: list[str] = []
    for entry in entries:
        positions = _tie_error(index, entry)
        if not positions:
            untied.append(error_message(entry))
        for position in positions:
            outcomes[position] = RecordOutcome(position, None, "error", error_message(entry), entry)
    remaining = [p for p in range(len(items)) if p not in outcomes]
    landed = len(remaining) if processed < 0 else min(processed, len(remaining))
    if untied:
        landed = 0
    message = f"not processed by Planhat ({max(processed, 0)} of {len(items)} metrics processed)"
    if untied:
        message += f"; errors tied to no item: {'; '.join(dict.fromkeys(untied))[:300]}"
    for order, position in enumerate(remaining):
        if order < landed:
            outcomes[position] = RecordOutcome(position, None, "sent")
        else:
            outcomes[position] = RecordOutcome(position, None, "error", message)
    return (
        [outcomes[p] for p in range(len(items))],
        processed if processed >= 0 else None,
        len(entries),
    )
