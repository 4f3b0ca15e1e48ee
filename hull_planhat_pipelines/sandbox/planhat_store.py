"""State and write rules of the emulated Planhat API (no HTTP here; see ``planhat.py``).

Records are plain dicts that are never mutated once stored: every write builds a new dict and
swaps it in, so a response being encoded on another thread always sees one consistent record.
Lookups go through indexes (``_id``, ``sourceId``, ``externalId``, email, domain, company), so a
bulk upsert of 5,000 items or paging through 100,000 records never scans a table per item.

Rules the documentation leaves open, decided here (strict where unsure: a sandbox kinder than
the real API hides bugs):

- Keyables are tried in the order ``_id``, ``sourceId``, ``externalId`` (endusers: then
  ``email`` when exactly one enduser has it); the first that matches wins. An ``_id`` that
  matches nothing is an error (a record cannot be created with a chosen ``_id``).
- An enduser ``externalId`` or ``email`` is looked up inside the item's company when the item
  names one (so an upsert never silently moves a person to another company), else across
  companies; an ``externalId`` held by several endusers is then ambiguous (an error), an email
  held by several is no keyable (the item is an insert).
- Two items of one request that resolve to the same new record: the second is an error
  ("duplicated"), as Planhat reports for overlapping upserts.
- Unknown top-level fields are dropped; dotted keys such as ``"custom.Plan"`` are unknown
  (custom fields go under ``custom``). ``custom`` is merged one level deep.
- Company ``externalId`` and ``sourceId`` are unique per model; enduser ``sourceId`` is unique,
  enduser ``externalId`` unique per company; enduser emails may repeat (matched exactly, case
  sensitive).
- An enduser ``name`` is stored with each word's first letter upper-cased (Planhat recases
  names), composed from ``firstName``/``lastName`` when not given.
- An activity for an unknown enduser whose ``companyExternalId`` names a company creates that
  enduser (Planhat needs ``companyExternalId`` for exactly that); activities set ``lastActive``.
- Metrics are validated item by item but their ``externalId`` is not required to exist.

Generic models (``GENERIC_MODELS``: conversations, licenses, assets, issues, tasks, projects,
invoices, nps, churn, opportunities, sales) are the "any other endpoint" a destination may
target. Their fields are not declared anywhere we trust, so:

- Every top-level field is kept except ``_id``, the timestamps, dotted keys and
  ``companyExternalId`` (resolved into the company field); ``custom`` must be an object and is
  merged one level deep. Keyables are ``_id``, ``sourceId``, ``externalId``; ``sourceId`` and
  ``externalId`` are unique per model.
- Required on create: only what a source says. Licenses need a company (Hull's connector:
  "licenses in bulk need companyId"); conversations need one too (Planhat ties every
  conversation to a company; notes are conversations with ``type: "note"``, so there is no
  ``/notes`` model). Nothing else is required.
- A record names its company by its company field (``companyId``; invoices ``cId``, per
  Planhat's odd field names) as an ``_id`` or ``extid-<externalId>``/``srcid-<sourceId>``, or by
  ``companyExternalId``; the field is stored as the company's ``_id``. A company named but not
  found is an error for every generic model (POST: 400; bulk: a per-item error), never
  silently ignored. ``companyIds`` (issues) is stored as given.
- ``fail_items`` rules apply to bulk items and, for generic models only, to single writes too
  (answered 400), since their destinations often write one record per call.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Record = dict[str, Any]
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class GenericModel:
    """A Planhat model the sandbox keeps without model-specific rules."""

    name: str
    """Planhat's model name (``Conversation``), used in messages and as an alias."""
    company_required: bool = False
    """Creating a record needs an existing company."""
    company_field: str = "companyId"
    required: tuple[str, ...] = ()
    """Fields a create must carry (beyond the company)."""


GENERIC_MODELS: dict[str, GenericModel] = {
    "conversations": GenericModel("Conversation", company_required=True),
    "licenses": GenericModel("License", company_required=True),
    "assets": GenericModel("Asset"),
    "issues": GenericModel("Issue"),
    "tasks": GenericModel("Task"),
    "projects": GenericModel("Project"),
    "invoices": GenericModel("Invoice", company_field="cId"),
    "nps": GenericModel("Nps"),
    "churn": GenericModel("Churn"),
    "opportunities": GenericModel("Opportunity"),
    "sales": GenericModel("Sale"),
}
"""Model path -> its rules. Page cap 2,000 (Airbyte and robocorp page "other models" so)."""
GENERIC_LIST_CAP = 2000
GENERIC_RESERVED = frozenset(
    {"_id", "companyExternalId", "createdAt", "createDate", "updatedAt", "lastUpdated"}
)
"""Fields a generic write never stores as given."""

LIST_CAPS: dict[str, int] = {
    "companies": 5000,
    "endusers": 2000,
    "users": 10000,
    **{name: GENERIC_LIST_CAP for name in GENERIC_MODELS},
}
DEFAULT_LIMIT = 100
"""Rows returned when ``limit`` is omitted (Planhat documents none; its clients page by 100)."""
BULK_MAX_ITEMS = 5000
COMPANY_STATUSES = frozenset({"prospect", "coming", "customer", "canceled", "lost"})
COMPANY_LIST_HIDDEN = frozenset({"custom", "externalId", "phase"})
"""Fields the company listing leaves out unless ``select`` names them."""
LEAN_FIELDS = ("_id", "name", "externalId", "sourceId", "slug")
METRIC_MODELS = frozenset({"Company", "EndUser", "Asset", "Project"})
USER_REQUIRED = ("email", "nickName", "firstName", "lastName")
TIMESTAMPS = frozenset({"createdAt", "createDate", "updatedAt", "lastUpdated"})

COMPANY_FIELDS = frozenset(
    {
        "name", "externalId", "sourceId", "domains", "owner", "coOwner", "phase", "status",
        "mrr", "arr", "h", "tags", "custom", "description", "web", "country", "city", "address",
        "zip", "phonePrimary", "customerFrom", "customerTo", "lastRenewal", "renewalDate",
    }
)  # fmt: skip
ENDUSER_FIELDS = frozenset(
    {
        "email", "externalId", "sourceId", "firstName", "lastName", "name", "position", "phone",
        "primary", "archived", "featured", "tags", "custom", "lastActive",
    }
)  # fmt: skip
USER_FIELDS = frozenset(
    {
        "email", "nickName", "firstName", "lastName", "roles", "externalId", "inactive",
        "isHidden", "removed", "image", "tzOffset", "custom",
    }
)  # fmt: skip
FIELDS = {"companies": COMPANY_FIELDS, "endusers": ENDUSER_FIELDS, "users": USER_FIELDS}
MODEL_NAMES = {
    "companies": "Company",
    "endusers": "EndUser",
    "users": "User",
    **{name: spec.name for name, spec in GENERIC_MODELS.items()},
}
_ALIASES = {
    "company": "companies",
    "companies": "companies",
    "enduser": "endusers",
    "endusers": "endusers",
    "user": "users",
    "users": "users",
    **{name: name for name in GENERIC_MODELS},
    **{spec.name.lower(): name for name, spec in GENERIC_MODELS.items()},
}
_DEFAULTS: dict[str, Callable[[], Record]] = {
    "companies": lambda: {"domains": [], "tags": [], "custom": {}},
    "endusers": lambda: {"archived": False, "primary": False, "tags": [], "custom": {}},
    "users": lambda: {"roles": [], "inactive": False, "isHidden": False, "removed": False},
    **{name: dict for name in GENERIC_MODELS},
}
"""Fields a created record starts with; anything else is absent until written."""
_DIMENSION_ID = re.compile(r"^[A-Za-z0-9_]+$")


class NotFound(Exception):
    """No record answers to the given id (HTTP 404)."""


class BadRequest(Exception):
    """A single-record request the API refuses (HTTP 400)."""


class ItemError(Exception):
    """One bulk item refused; the rest of the request goes on."""


def model_name(model: str) -> str:
    """``company``/``Company``/``companies`` -> ``companies``; anything else is a bug."""
    try:
        return _ALIASES[model.lower()]
    except KeyError:
        raise ValueError(f"unknown Planhat model {model!r}") from None


def iso(moment: datetime) -> str:
    """Planhat's date format: ISO-8601 UTC with milliseconds and ``Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def key(value: Any) -> str | None:
    """The index key of a keyable value; ``None`` and ``""`` are no key."""
    if value is None or value == "":
        return None
    return str(value)


def recase(name: str) -> str:
    """Upper-case each word's first letter, as Planhat does to enduser names."""
    return " ".join(word[:1].upper() + word[1:] for word in name.split())


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _parses_as_date(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    # field: (check, expected, may be null)
    "name": (lambda v: isinstance(v, str), "a string", False),
    "email": (lambda v: isinstance(v, str), "a string", True),
    "nickName": (lambda v: isinstance(v, str), "a string", False),
    "custom": (lambda v: isinstance(v, dict), "an object", False),
    "domains": (_is_str_list, "an array of strings", False),
    "tags": (_is_str_list, "an array of strings", False),
    "roles": (lambda v: isinstance(v, list), "an array", False),
    "status": (
        lambda v: v in COMPANY_STATUSES,
        "one of " + ", ".join(sorted(COMPANY_STATUSES)),
        False,
    ),
    "mrr": (is_number, "a number", True),
    "arr": (is_number, "a number", True),
    "h": (is_number, "a number", True),
    "archived": (lambda v: isinstance(v, bool), "a boolean", False),
    "primary": (lambda v: isinstance(v, bool), "a boolean", False),
    "featured": (lambda v: isinstance(v, bool), "a boolean", False),
    "inactive": (lambda v: isinstance(v, bool), "a boolean", False),
    "isHidden": (lambda v: isinstance(v, bool), "a boolean", False),
    "removed": (lambda v: isinstance(v, bool), "a boolean", False),
}


def _type_error(field_name: str, value: Any) -> str | None:
    check = _TYPE_CHECKS.get(field_name)
    if check is None:
        return None
    test, expected, nullable = check
    if value is None:
        return None if nullable else f"{field_name} must be {expected}"
    return None if test(value) else f"{field_name} must be {expected}"


def sort_key(value: Any) -> tuple[int, Any]:
    """MongoDB's cross-type order: null < numbers < strings < objects < arrays < booleans."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (5, value)
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3 if isinstance(value, dict) else 4, repr(value))


def dotted(record: Mapping[str, Any], path: str) -> Any:
    """``custom.Plan`` -> ``record["custom"]["Plan"]`` (``None`` when absent)."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def project(record: Record, fields: Iterable[str]) -> Record:
    """Mongo-style ``select``: ``_id`` plus the named fields (dotted paths allowed)."""
    out: Record = {"_id": record["_id"]}
    for name in fields:
        top, _, sub = name.partition(".")
        if top not in record:
            continue
        if not sub:
            out[top] = record[top]
        elif isinstance(record[top], dict) and sub in record[top]:
            out.setdefault(top, {})[sub] = record[top][sub]
    return out


class IdFactory:
    """24-hex ids shaped like MongoDB ObjectIds (time, machine, counter), seeded for determinism."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"planhat-ids:{seed}")
        self._machine = rng.getrandbits(40)
        self._counter = rng.getrandbits(24)

    def new(self, at: datetime) -> str:
        self._counter = (self._counter + 1) & 0xFFFFFF
        return f"{int(at.timestamp()) & 0xFFFFFFFF:08x}{self._machine:010x}{self._counter:06x}"


@dataclass
class Table:
    """One model's records in creation order, plus the indexes its rules need."""

    rows: dict[str, Record] = field(default_factory=dict)
    by_source: dict[str, str] = field(default_factory=dict)
    by_ext: dict[str, set[str]] = field(default_factory=dict)
    by_email: dict[str, set[str]] = field(default_factory=dict)
    by_domain: dict[str, set[str]] = field(default_factory=dict)
    by_company: dict[str, set[str]] = field(default_factory=dict)
    by_company_ext: dict[tuple[str, str], str] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)
    """Creation order of each record: the default listing order."""
    version: int = 0

    def index(self, rec: Record, add: bool) -> None:
        rid = rec["_id"]
        pairs: list[tuple[dict[Any, set[str]], Any]] = [
            (self.by_ext, key(rec.get("externalId"))),
            (self.by_email, key(rec.get("email"))),
            (self.by_company, key(rec.get("companyId"))),
        ]
        pairs += [(self.by_domain, d.lower()) for d in rec.get("domains") or () if d]
        for index, k in pairs:
            if k is None:
                continue
            if add:
                index.setdefault(k, set()).add(rid)
            elif k in index:
                index[k].discard(rid)
                if not index[k]:
                    del index[k]
        self._index_unique(rec, add)

    def _index_unique(self, rec: Record, add: bool) -> None:
        rid = rec["_id"]
        src, ext, company = (
            key(rec.get("sourceId")),
            key(rec.get("externalId")),
            rec.get("companyId"),
        )
        unique: list[tuple[dict[Any, str], Any]] = [(self.by_source, src)]
        if company and ext:
            unique.append((self.by_company_ext, (company, ext)))
        for index, k in unique:
            if k is None:
                continue
            if add:
                index[k] = rid
            elif index.get(k) == rid:
                del index[k]

    def put(self, new: Record, old: Record | None) -> None:
        if old is not None:
            self.index(old, add=False)
        self.rows[new["_id"]] = new
        self.position.setdefault(new["_id"], self.version)
        self.index(new, add=True)
        self.version += 1

    def drop(self, rid: str) -> Record | None:
        old = self.rows.pop(rid, None)
        if old is not None:
            del self.position[rid]
            self.index(old, add=False)
            self.version += 1
        return old

    def one(self, ids: set[str] | None) -> Record | None:
        """The record of a one-element id set (``None`` when empty or ambiguous)."""
        if not ids or len(ids) != 1:
            return None
        return self.rows[next(iter(ids))]

    def in_order(self, ids: Iterable[str]) -> list[Record]:
        """Some records in creation order."""
        return [self.rows[i] for i in sorted(ids, key=self.position.__getitem__)]

    def oldest(self, ids: Iterable[str]) -> Record | None:
        ids = list(ids)
        return self.rows[min(ids, key=self.position.__getitem__)] if ids else None


@dataclass
class Injected:
    """A per-item failure switched on by a test (``times`` None: for ever)."""

    predicate: Callable[[Record], bool]
    message: str
    times: int | None


@dataclass
class BulkResult:
    """Planhat's bulk upsert answer, filled item by item."""

    created: int = 0
    createdErrors: list[Any] = field(default_factory=list)
    insertsKeys: list[Record] = field(default_factory=list)
    updated: int = 0
    updatedErrors: list[Any] = field(default_factory=list)
    updatesKeys: list[Record] = field(default_factory=list)
    nonupdates: int = 0
    modified: list[str] = field(default_factory=list)
    upsertedIds: list[str] = field(default_factory=list)
    permissionErrors: list[Any] = field(default_factory=list)
    created_ids: set[str] = field(default_factory=set)
    full_keys: bool = False
    """Key entries name ``externalId``/``sourceId`` too (kinder than Planhat's documented
    ``{_id}``-only entries: only on request)."""

    def _keys(self, rec: Record) -> Record:
        return keys_of(rec) if self.full_keys else {"_id": rec["_id"]}

    def add_created(self, rec: Record) -> None:
        self.created += 1
        self.created_ids.add(rec["_id"])
        self.insertsKeys.append(self._keys(rec))
        self.upsertedIds.append(rec["_id"])

    def add_matched(self, rec: Record, changed: bool) -> None:
        self.updatesKeys.append(self._keys(rec))
        if changed:
            self.updated += 1
            self.modified.append(rec["_id"])
        else:
            self.nonupdates += 1

    @property
    def status(self) -> int:
        errors = len(self.createdErrors) + len(self.updatedErrors)
        applied = self.created + self.updated + self.nonupdates
        if self.permissionErrors and not applied:
            return 403
        errors += len(self.permissionErrors)
        if errors and not applied:
            return 400
        return 206 if errors else 200

    def body(self) -> Record:
        return {
            "created": self.created,
            "createdErrors": self.createdErrors,
            "insertsKeys": self.insertsKeys,
            "updated": self.updated,
            "updatedErrors": self.updatedErrors,
            "updatesKeys": self.updatesKeys,
            "nonupdates": self.nonupdates,
            "modified": self.modified,
            "upsertedIds": self.upsertedIds,
            "permissionErrors": self.permissionErrors,
        }


def keys_of(rec: Record) -> Record:
    """``{_id, externalId?, sourceId?}``: the keys Planhat echoes per inserted/updated item."""
    out: Record = {"_id": rec["_id"]}
    for name in ("externalId", "sourceId"):
        if key(rec.get(name)) is not None:
            out[name] = rec[name]
    return out


def copy_record(rec: Record) -> Record:
    """A copy safe to mutate (nested objects and lists copied one level)."""
    return {
        k: dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v
        for k, v in rec.items()
    }


def content(rec: Record) -> Record:
    """A record without its timestamps: what "changed nothing" compares."""
    return {k: v for k, v in rec.items() if k not in TIMESTAMPS}


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def metric_error(item: Any) -> str | None:
    """Why a dimension-data item is refused, or ``None`` when it is accepted."""
    if not isinstance(item, dict):
        return "item must be an object"
    dimension = item.get("dimensionId")
    if dimension in (None, ""):
        return "dimensionId must be specified"
    if not isinstance(dimension, str) or not _DIMENSION_ID.match(dimension):
        return "dimensionId may only contain letters, digits and underscores"
    if "value" not in item or item["value"] is None:
        return "value must be specified"
    if not is_number(item["value"]):
        return "value must be a number"
    if key(item.get("externalId")) is None:
        return "externalId must be specified"
    if item.get("model", "Company") not in METRIC_MODELS:
        return "model must be one of " + ", ".join(sorted(METRIC_MODELS))
    if "date" in item and not _parses_as_date(item["date"]):
        return "date must be an ISO-8601 date"
    return None


class PlanhatStore:
    """Companies, endusers, team members, activities and metrics of one emulated tenant.

    Every public method takes the one lock: writes apply one request at a time, as Planhat
    asks clients to send bulk writes sequentially.
    """

    def __init__(self, *, seed: int = 0, clock: Clock) -> None:
        self.clock = clock
        self.ids = IdFactory(seed)
        self.tables = {name: Table() for name in LIST_CAPS}
        self.list_caps = dict(LIST_CAPS)
        self.activities: list[Record] = []
        self.dimension_data: list[Record] = []
        self._injected: dict[str, list[Injected]] = {name: [] for name in LIST_CAPS}
        self._denials: dict[str, list[tuple[Callable[[Record], bool], str]]] = {}
        self._sorted: dict[tuple[str, str], tuple[int, list[Record]]] = {}
        self.lock = threading.RLock()

    @property
    def companies(self) -> Table:
        return self.tables["companies"]

    @property
    def endusers(self) -> Table:
        return self.tables["endusers"]

    @property
    def users(self) -> Table:
        return self.tables["users"]

    def now(self) -> str:
        return iso(self.clock())

    def new_id(self, at: datetime | None = None) -> str:
        while True:
            rid = self.ids.new(at or self.clock())
            if all(rid not in t.rows for t in self.tables.values()):
                return rid

    # -- test setup ---------------------------------------------------------------------------
    def inject(
        self, model: str, predicate: Callable[[Record], bool], message: str, times: int | None
    ) -> None:
        with self.lock:
            self._injected[model_name(model)].append(Injected(predicate, message, times))

    def seed_records(self, model: str, records: Iterable[Record]) -> list[Record]:
        """Store records as given (no API rules), filling ``_id``, timestamps and links."""
        model = model_name(model)
        with self.lock:
            return [self._seed_one(model, given) for given in records]

    def _seed_one(self, model: str, given: Record) -> Record:
        created = given.get("createdAt") or self.now()
        rid = given.get("_id")
        if rid is None:
            rid = self.new_id(datetime.fromisoformat(created.replace("Z", "+00:00")))
        elif any(rid in t.rows for t in self.tables.values()):
            raise ValueError(f"duplicate _id {rid}")
        rec = {"_id": rid, **copy_record(given)}
        rec.setdefault("createdAt", created)
        rec.setdefault("createDate", rec["createdAt"])
        rec.setdefault("updatedAt", rec["createdAt"])
        if model == "companies":
            rec.setdefault("lastUpdated", rec["updatedAt"])
            rec.setdefault("slug", slugify(str(rec.get("name") or rid)))
        if model == "endusers":
            self._seed_link(rec)
        if model in GENERIC_MODELS:
            self._seed_generic_link(model, rec)
        self.tables[model].put(rec, None)
        return rec

    def _seed_link(self, rec: Record) -> None:
        ref = rec.pop("companyExternalId", None)
        if rec.get("companyId") is None and ref is not None:
            rec["companyId"] = self.company_id(f"extid-{ref}")
        company = self.companies.rows.get(rec.get("companyId") or "")
        if company is None:
            raise ValueError(f"enduser {rec.get('email')!r} names no existing company")
        rec["companyName"] = company.get("name")

    def _seed_generic_link(self, model: str, rec: Record) -> None:
        ref = rec.pop("companyExternalId", None)
        field_name = GENERIC_MODELS[model].company_field
        if rec.get(field_name) is None and ref is not None:
            company_id = self.company_id(f"extid-{ref}")
            if company_id is None:
                raise ValueError(f"{model} record names no existing company {ref!r}")
            rec[field_name] = company_id

    # -- reads --------------------------------------------------------------------------------
    def company_id(self, ref: str) -> str | None:
        rec = self._resolve("companies", ref)
        return rec["_id"] if rec else None

    def _resolve(self, model: str, ref: str) -> Record | None:
        """A record by ``_id``, ``extid-<externalId>`` or ``srcid-<sourceId>``."""
        table = self.tables[model]
        if ref.startswith("extid-"):
            return table.oldest(table.by_ext.get(ref[len("extid-") :], ()))
        if ref.startswith("srcid-"):
            rid = table.by_source.get(ref[len("srcid-") :])
            return table.rows.get(rid) if rid else None
        return table.rows.get(ref)

    def get(self, model: str, ref: str) -> Record:
        with self.lock:
            rec = self._resolve(model, ref)
        if rec is None:
            raise NotFound(f"{MODEL_NAMES[model]} not found")
        return rec

    def all(self, model: str, include_archived: bool = True) -> list[Record]:
        with self.lock:
            rows = list(self.tables[model].rows.values())
        return [r for r in rows if include_archived or not r.get("archived")]

    def listing(
        self,
        model: str,
        *,
        limit: int | None,
        offset: int,
        sort: str | None,
        select: list[str] | None,
        filters: Mapping[str, str],
    ) -> list[Record]:
        """One page of a list endpoint, capped, sorted and projected like Planhat's."""
        cap = self.list_caps[model]
        size = DEFAULT_LIMIT if limit is None else cap if limit == 0 else min(limit, cap)
        with self.lock:
            rows = self._ordered(model, sort, filters)
            page = rows[offset : offset + size]
            if model == "companies":
                return [self._company_list_item(r, select) for r in page]
        return [project(r, select) for r in page] if select is not None else page

    def _ordered(self, model: str, sort: str | None, filters: Mapping[str, str]) -> list[Record]:
        if filters:
            return self._sorted_rows(self._filtered(model, filters), sort)
        cache_key = (model, sort or "")
        table = self.tables[model]
        cached = self._sorted.get(cache_key)
        if cached is None or cached[0] != table.version:
            rows = (
                [r for r in table.rows.values() if not r.get("archived")]
                if model == "endusers"
                else list(table.rows.values())
            )
            cached = (table.version, self._sorted_rows(rows, sort))
            self._sorted[cache_key] = cached
        return cached[1]

    def _filtered(self, model: str, filters: Mapping[str, str]) -> list[Record]:
        """Rows matching the ``companyId`` (comma-separated) and ``email`` filters, in order."""
        table = self.tables[model]
        ids: set[str] | None = None
        if "companyId" in filters:
            refs = [c.strip() for c in filters["companyId"].split(",") if c.strip()]
            companies = {self.company_id(ref) for ref in refs}
            ids = set().union(*(table.by_company.get(c, set()) for c in companies if c))
        if "email" in filters:
            by_email = table.by_email.get(filters["email"], set())
            ids = by_email if ids is None else ids & by_email
        rows = table.in_order(ids) if ids is not None else list(table.rows.values())
        return [r for r in rows if not (model == "endusers" and r.get("archived"))]

    @staticmethod
    def _sorted_rows(rows: list[Record], sort: str | None) -> list[Record]:
        if not sort:
            return rows
        descending = sort.startswith("-")
        path = sort.lstrip("-+")
        rows = sorted(rows, key=lambda r: r["_id"])
        return sorted(rows, key=lambda r: sort_key(dotted(r, path)), reverse=descending)

    def _company_list_item(self, rec: Record, select: list[str] | None) -> Record:
        if select is None:
            out = {k: v for k, v in rec.items() if k not in COMPANY_LIST_HIDDEN}
        else:
            out = project(rec, select)
        for name in ("owner", "coOwner"):
            uid = out.get(name)
            if isinstance(uid, str):
                user = self.users.rows.get(uid) or {}
                out[name] = {"_id": uid, "nickName": user.get("nickName")}
        return out

    def lean_companies(self, filters: Mapping[str, str]) -> list[Record]:
        """``/leancompanies``: every company (no page cap), optionally filtered."""
        with self.lock:
            rows: Iterable[Record] = self.companies.rows.values()
            if "externalId" in filters:
                rows = [
                    self.companies.rows[i]
                    for i in self.companies.by_ext.get(filters["externalId"], ())
                ]
            if "sourceId" in filters:
                rid = self.companies.by_source.get(filters["sourceId"])
                rows = [r for r in rows if r["_id"] == rid]
            if "status" in filters:
                rows = [r for r in rows if r.get("status") == filters["status"]]
            return [{k: r[k] for k in LEAN_FIELDS if k in r} for r in rows]

    # -- write rules shared by bulk and single writes ----------------------------------------
    def _clean(self, model: str, item: Record) -> Record:
        """The known, well-typed fields of a write (unknown ones dropped); ItemError otherwise."""
        if model in GENERIC_MODELS:
            return _clean_generic(GENERIC_MODELS[model], item)
        changes = {k: v for k, v in item.items() if k in FIELDS[model]}
        for name, value in changes.items():
            problem = _type_error(name, value)
            if problem:
                raise ItemError(problem)
        if model == "companies" and "name" in changes and not changes["name"].strip():
            raise ItemError("name must not be empty")
        for name in ("owner", "coOwner"):
            if (
                name in changes
                and changes[name] is not None
                and (not isinstance(changes[name], str) or changes[name] not in self.users.rows)
            ):
                raise ItemError(f"Invalid {name} id {changes[name]!r}: not a Planhat user _id")
        return changes

    def _merge(self, model: str, old: Record, changes: Record, company_id: str | None) -> Record:
        new = dict(old)
        for name, value in changes.items():
            new[name] = {**(old.get("custom") or {}), **value} if name == "custom" else value
        if model == "endusers":
            self._enduser_links(new, old, changes, company_id)
        if model in GENERIC_MODELS and company_id is not None:
            new[GENERIC_MODELS[model].company_field] = company_id
        return new

    def _enduser_links(
        self, new: Record, old: Record, changes: Record, company_id: str | None
    ) -> None:
        """Company name copied onto the enduser; ``name`` recased or composed from its parts."""
        if company_id is not None:
            new["companyId"] = company_id
            new["companyName"] = self.companies.rows[company_id].get("name")
        if isinstance(changes.get("name"), str):
            new["name"] = recase(changes["name"])
        elif ("firstName" in changes or "lastName" in changes) and (
            not old.get("name") or old.get("name") == _composed(old)
        ):
            composed = _composed(new)
            if composed:
                new["name"] = composed

    def _check_unique(self, model: str, rec: Record) -> None:
        table, rid = self.tables[model], rec["_id"]
        src, ext = key(rec.get("sourceId")), key(rec.get("externalId"))
        if src is not None and table.by_source.get(src, rid) != rid:
            raise ItemError(f"sourceId {src!r} is already used by {table.by_source[src]}")
        if (
            (model == "companies" or model in GENERIC_MODELS)
            and ext is not None
            and (table.by_ext.get(ext, set()) - {rid})
        ):
            raise ItemError(f"externalId {ext!r} is already used by another {MODEL_NAMES[model]}")
        if model == "endusers" and ext is not None:
            holder = table.by_company_ext.get((rec["companyId"], ext), rid)
            if holder != rid:
                raise ItemError(f"externalId {ext!r} duplicated in company {rec['companyId']}")
        if (
            model == "users"
            and key(rec.get("email"))
            and (table.by_email.get(rec["email"], set()) - {rid})
        ):
            raise ItemError(f"email {rec['email']!r} is already used by another user")

    def _stamp(self, model: str, rec: Record, now: str, created: bool) -> Record:
        """Every write bumps ``updatedAt`` (companies: ``lastUpdated``), changed or not."""
        if created:
            rec["createdAt"] = rec["createDate"] = now
        rec["updatedAt"] = now
        if model == "companies":
            rec["lastUpdated"] = now
        return rec

    def _save(self, model: str, new: Record, old: Record | None) -> None:
        self.tables[model].put(new, old)
        if model == "companies" and old is not None and old.get("name") != new.get("name"):
            for eid in list(self.endusers.by_company.get(new["_id"], ())):
                enduser = self.endusers.rows[eid]
                self.endusers.put({**enduser, "companyName": new.get("name")}, enduser)

    def _company_link(self, model: str, item: Record) -> tuple[bool, str | None]:
        """Whether an item names its company, and that company's ``_id`` if it exists."""
        if model in GENERIC_MODELS:
            field_name = GENERIC_MODELS[model].company_field
        elif model == "endusers":
            field_name = "companyId"
        else:
            return False, None
        ref, ext = key(item.get(field_name)), key(item.get("companyExternalId"))
        if ref is not None:
            return True, self.company_id(ref)
        if ext is not None:
            return True, self.company_id(f"extid-{ext}")
        return False, None

    def _company_by_domain(self, email: Any) -> str | None:
        """The one company whose ``domains`` hold the email's domain (none when ambiguous)."""
        if not isinstance(email, str) or "@" not in email:
            return None
        ids = self.companies.by_domain.get(email.rsplit("@", 1)[1].lower())
        return next(iter(ids)) if ids and len(ids) == 1 else None

    def _match(self, model: str, item: Record, company_id: str | None) -> Record | None:
        """The record an upsert item addresses: keyables ``_id``, ``sourceId``, ``externalId``
        (endusers: then a unique ``email``); the first that matches wins."""
        table = self.tables[model]
        rid = key(item.get("_id"))
        if rid is not None:
            if rid in table.rows:
                return table.rows[rid]
            raise ItemError(f"no {MODEL_NAMES[model]} with _id {rid!r}")
        src = key(item.get("sourceId"))
        if src is not None and src in table.by_source:
            return table.rows[table.by_source[src]]
        ext = key(item.get("externalId"))
        if ext is not None:
            found = self._match_external(model, ext, company_id)
            if found is not None:
                return found
        if model == "endusers" and key(item.get("email")) is not None:
            ids = table.by_email.get(item["email"], set())
            if company_id is not None:
                ids = ids & table.by_company.get(company_id, set())
            return table.one(ids)
        return None

    def _match_external(self, model: str, ext: str, company_id: str | None) -> Record | None:
        table = self.tables[model]
        if model == "endusers" and company_id is not None:
            rid = table.by_company_ext.get((company_id, ext))
            return table.rows[rid] if rid else None
        ids = table.by_ext.get(ext)
        if ids and len(ids) > 1:
            raise ItemError(f"externalId {ext!r} is held by several endusers: name the company")
        return table.one(ids)

    def deny(self, model: str, predicate: Callable[[Record], bool], message: str) -> None:
        """Bulk items matching ``predicate`` are refused as ``permissionErrors``."""
        self._denials.setdefault(model_name(model), []).append((predicate, message))

    def _denied(self, model: str, item: Record) -> str | None:
        for predicate, message in self._denials.get(model, ()):
            if predicate(item):
                return message
        return None

    def _take_injected(self, model: str, item: Record) -> None:
        for rule in self._injected.get(model, ()):
            if (rule.times is None or rule.times > 0) and rule.predicate(item):
                if rule.times is not None:
                    rule.times -= 1
                raise ItemError(rule.message)

    def _create(
        self, model: str, item: Record, named: bool, company_id: str | None, now: str
    ) -> Record | None:
        """A new record from an unmatched item; ``None`` for an enduser tied to no company."""
        changes = self._clean(model, item)
        if model == "companies" and not (
            isinstance(changes.get("name"), str) and changes["name"].strip()
        ):
            raise ItemError("name is required to create a company")
        if model in GENERIC_MODELS:
            _check_generic_create(GENERIC_MODELS[model], changes, named, company_id)
        if model == "endusers":
            if not named:
                company_id = self._company_by_domain(changes.get("email"))
            if company_id is None:
                return None
            if key(changes.get("email")) is None and key(changes.get("externalId")) is None:
                raise ItemError("email or externalId is required to create an enduser")
        base: Record = {"_id": self.new_id(), **_DEFAULTS[model]()}
        if model == "companies":
            base["slug"] = slugify(changes["name"])
        new = self._merge(model, base, changes, company_id)
        self._check_unique(model, new)
        self._save(model, self._stamp(model, new, now, created=True), None)
        return new

    def _update(
        self, model: str, old: Record, item: Record, named: bool, company_id: str | None, now: str
    ) -> tuple[Record, bool]:
        if named and company_id is None:
            raise ItemError(
                f"company not found: {item.get('companyId') or item.get('companyExternalId')!r}"
            )
        new = self._merge(model, old, self._clean(model, item), company_id)
        self._check_unique(model, new)
        changed = content(new) != content(old)
        self._save(model, self._stamp(model, new, now, created=False), old)
        return new, changed

    # -- bulk upsert --------------------------------------------------------------------------
    def bulk_upsert(self, model: str, items: list[Any], *, full_keys: bool = False) -> BulkResult:
        """``PUT /companies|/endusers``: each item created, updated or refused on its own."""
        result = BulkResult(full_keys=full_keys)
        with self.lock:
            now = self.now()
            for item in items:
                self._bulk_item(model, item, result, now)
        return result

    def _bulk_item(self, model: str, item: Any, result: BulkResult, now: str) -> None:
        existing: Record | None = None
        try:
            if not isinstance(item, dict):
                raise ItemError("item must be a JSON object")
            named, company_id = self._company_link(model, item)
            existing = self._match(model, item, company_id)
            if existing is not None and existing["_id"] in result.created_ids:
                existing = None
                raise ItemError("duplicated: another item of this request creates the same record")
            self._take_injected(model, item)
            denied = self._denied(model, item)
            if denied is not None:
                result.permissionErrors.append({"item": item, "error": denied})
                return
            if existing is None:
                created = self._create(model, item, named, company_id, now)
                if created is not None:  # an enduser tied to no company is silently ignored
                    result.add_created(created)
            else:
                updated, changed = self._update(model, existing, item, named, company_id, now)
                result.add_matched(updated, changed)
        except ItemError as exc:
            errors = result.updatedErrors if existing is not None else result.createdErrors
            errors.append({"item": item, "error": str(exc)})

    # -- single-record writes -----------------------------------------------------------------
    def create_one(self, model: str, body: Any) -> Record:
        """``POST /companies|/endusers|/users``: 400 instead of per-item errors."""
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        with self.lock:
            if model == "users":
                missing = [f for f in USER_REQUIRED if key(body.get(f)) is None]
                if missing:
                    raise BadRequest("missing required fields: " + ", ".join(missing))
            named, company_id = self._company_link(model, body)
            if model in GENERIC_MODELS:
                return self._create_generic(model, body, named, company_id)
            if model == "endusers" and company_id is None:
                raise BadRequest(
                    "companyId does not name an existing company"
                    if named
                    else "companyId is required"
                )
            try:
                created = self._create(model, body, True, company_id, self.now())
            except ItemError as exc:
                raise BadRequest(str(exc)) from None
        assert created is not None
        return created

    def _create_generic(
        self, model: str, body: Record, named: bool, company_id: str | None
    ) -> Record:
        try:
            self._take_injected(model, body)
            created = self._create(model, body, named, company_id, self.now())
        except ItemError as exc:
            raise BadRequest(str(exc)) from None
        assert created is not None
        return created

    def update_one(self, model: str, ref: str, body: Any) -> Record:
        """``PUT /{model}/{id}``: a partial update returning the whole record."""
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        with self.lock:
            old = self._resolve(model, ref)
            if old is None:
                raise NotFound(f"{MODEL_NAMES[model]} not found")
            if key(body.get("_id")) not in (None, old["_id"]):
                raise BadRequest("_id cannot be changed")
            named, company_id = self._company_link(model, body)
            try:
                if model in GENERIC_MODELS:
                    self._take_injected(model, body)
                new, _ = self._update(model, old, body, named, company_id, self.now())
            except ItemError as exc:
                raise BadRequest(str(exc)) from None
        return new

    def delete(self, model: str, rid: str) -> Record:
        """``DELETE /{model}/{_id}`` (``_id`` only); a company takes its endusers with it."""
        with self.lock:
            old = self.tables[model].drop(rid)
            if old is None:
                raise NotFound(f"{MODEL_NAMES[model]} not found")
            if model == "companies":
                for eid in list(self.endusers.by_company.get(rid, ())):
                    self.endusers.drop(eid)
        return {"n": 1, "ok": 1, "deletedCount": 1}

    # -- analytics ----------------------------------------------------------------------------
    def record_activity(self, item: Any) -> bool:
        """Keep an activity tied to an enduser; ``False`` when Planhat would drop it."""
        if not isinstance(item, dict):
            return False
        with self.lock:
            now = self.now()
            enduser = self._activity_target(item, now)
            if enduser is None:
                return False
            self.endusers.put({**enduser, "lastActive": now}, enduser)
            self.activities.append(
                {
                    **item,
                    "count": item.get("count", 1),
                    "date": item.get("date") or now,
                    "endUserId": enduser["_id"],
                    "companyId": enduser["companyId"],
                    "receivedAt": now,
                }
            )
        return True

    def _activity_target(self, item: Record, now: str) -> Record | None:
        """The activity's enduser, created when unknown but its company is named and known."""
        email = key(item.get("email"))
        ext = key(item.get("externalId")) or key(item.get("euExtId"))  # seed 002's bulk name
        if email is None and ext is None:
            return None
        company_ext = key(item.get("companyExternalId"))
        company_id = self.company_id(f"extid-{company_ext}") if company_ext else None
        enduser = self._activity_enduser(email, ext, company_id)
        if enduser is not None or company_id is None:
            return enduser
        try:
            return self._create("endusers", _activity_enduser_fields(item), True, company_id, now)
        except ItemError:
            return None

    def _activity_enduser(
        self, email: str | None, ext: str | None, company_id: str | None
    ) -> Record | None:
        """By externalId, then email; in the named company, else the primary, else the oldest."""
        table = self.endusers
        for index, k in ((table.by_ext, ext), (table.by_email, email)):
            ids = set(index.get(k, ())) if k is not None else set()
            if company_id is not None:
                ids &= table.by_company.get(company_id, set())
            if ids:
                primary = [i for i in ids if table.rows[i].get("primary")]
                return table.oldest(primary or ids)
        return None

    def record_metrics(self, items: list[Any], limit: int | None = None) -> Record:
        """``POST /dimensiondata``: ``{"processed": accepted, "errors": [...]}``.

        ``limit``: at most that many valid items are kept, in order; the rest are dropped with
        no error item (a partial ``processed``, as Planhat may answer)."""
        errors: list[Record] = []
        processed = 0
        with self.lock:
            now = self.now()
            for item in items:
                problem = metric_error(item)
                if problem:
                    errors.append({"item": item, "error": problem})
                    continue
                if limit is not None and processed >= limit:
                    continue
                self.dimension_data.append(
                    {
                        **item,
                        "model": item.get("model", "Company"),
                        "date": item.get("date") or now,
                        "receivedAt": now,
                    }
                )
                processed += 1
        return {"processed": processed, "errors": errors}


def _clean_generic(spec: GenericModel, item: Record) -> Record:
    """Every top-level field but the reserved ones, the company field and dotted keys."""
    changes = {
        k: v
        for k, v in item.items()
        if k not in GENERIC_RESERVED and k != spec.company_field and "." not in k
    }
    if "custom" in changes and not isinstance(changes["custom"], dict):
        raise ItemError("custom must be an object")
    return changes


def _check_generic_create(
    spec: GenericModel, changes: Record, named: bool, company_id: str | None
) -> None:
    """A generic create's company and required fields, as ``GENERIC_MODELS`` declares them."""
    if named and company_id is None:
        raise ItemError(f"{spec.company_field} does not name an existing company")
    if spec.company_required and company_id is None:
        raise ItemError(f"{spec.company_field} or companyExternalId is required")
    missing = [f for f in spec.required if key(changes.get(f)) is None]
    if missing:
        raise ItemError("missing required fields: " + ", ".join(missing))


def _composed(rec: Record) -> str | None:
    parts = [p for p in (rec.get("firstName"), rec.get("lastName")) if isinstance(p, str) and p]
    return recase(" ".join(parts)) if parts else None


def _activity_enduser_fields(item: Record) -> Record:
    """The enduser Planhat creates for an activity naming an unknown person of a known company."""
    fields = {k: item[k] for k in ("email", "externalId", "name") if key(item.get(k)) is not None}
    if not isinstance(fields.get("name"), str):
        fields.pop("name", None)
    return fields
