"""Deterministic seeded data for the emulated Copper API.

Everything derives from ``(seed, scale, now)``: the same inputs give the same metadata and the
same records, byte for byte. Records are generated **by row** on demand; only the columns that
searches filter and sort on (ids, dates, activity parents and types, name parts) are built up
front as numpy arrays, so a million leads start in about a second at some 40 bytes a row.

Rows are in creation order: ``date_created`` never decreases with the row and ids increase
with it (with gaps), like Copper's sequences. ``date_modified`` does not follow the row order.

The edge cases the pipeline must survive are pinned to the first rows of each object (so they
exist at every scale) and listed in :attr:`CopperSeed.edge_cases`; more of the same kind are
spread through the data by rules on the row number.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import html
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

SEED_START = 1696118400
"""2023-10-01T00:00:00Z: the oldest generated date, three months before the example start_date."""
DAY = 86_400
PLANHAT_TEAM_SIZE = 8
"""Planhat team members whose ids companies carry in ``assignee_planhat_id``."""
PARENT_TYPES = ("person", "lead", "company", "opportunity", "project", "task")
"""Codes of the activities' ``parent_type`` column (index = code); the seed uses the first four."""
CATEGORIES = ("user", "system")
"""Codes of the activities' ``type_category`` column (index = code)."""
PRIORITIES = ("None", "Low", "Medium", "High")
STATUSES = ("Open", "Won", "Lost", "Abandoned")
JAN_14_2024 = 1705190400
MISSING_LEAD_ID = 69_000_009
"""A converted lead named in a person's ``leads_converted_from`` but absent from the leads."""
UNKNOWN_COMPANY_BASE = 99_000_000
"""People of rows 6, 25, 44, ... point at ``UNKNOWN_COMPANY_BASE + row``: not a seeded company."""

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_LCG_A = 6364136223846793005
_LCG_C = 1442695040888963407
_INV32 = 2.0**-32


# -- deterministic randomness ------------------------------------------------------------------
def _mix64(z: int) -> int:
    """splitmix64's finalizer: a fast, well-spread 64-bit hash (stable across Python versions)."""
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


@functools.lru_cache(maxsize=256)
def _salt(label: str) -> int:
    return zlib.crc32(label.encode())


def _key(*parts: int) -> int:
    state = 0
    for part in parts:
        state = _mix64(((state ^ (part & _MASK)) + _GOLDEN) & _MASK)
    return state


class Dice:
    """A tiny deterministic random stream keyed by integers (seed, purpose, row).

    Records are generated one row at a time, often 200 per request, so this must be cheap: the
    key is spread with splitmix64 once, then each draw is one 64-bit LCG step (its high 32 bits
    are well distributed). Independent of ``random`` and numpy, so stable across versions.
    """

    __slots__ = ("_state",)

    def __init__(self, *keys: int) -> None:
        self._state = _key(*keys)

    def next(self) -> int:
        """32 random bits."""
        self._state = (self._state * _LCG_A + _LCG_C) & _MASK
        return self._state >> 32

    def random(self) -> float:
        return self.next() * _INV32

    def below(self, n: int) -> int:
        return (self.next() * n) >> 32

    def between(self, low: int, high: int) -> int:
        """An integer in ``[low, high]``."""
        return low + ((self.next() * (high - low + 1)) >> 32)

    def chance(self, p: float) -> bool:
        return self.next() * _INV32 < p

    def choice(self, items: Sequence[T]) -> T:
        return items[(self.next() * len(items)) >> 32]

    def sample(self, items: Sequence[T], k: int) -> list[T]:
        pool = list(items)
        return [pool.pop(self.below(len(pool))) for _ in range(min(k, len(pool)))]


def _hashes(seed: int, label: str, n: int) -> np.ndarray:
    """``n`` uint64 hashes, one per row: the vectorised counterpart of :class:`Dice`."""
    key = np.uint64(_key(seed, _salt(label)))
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) * np.uint64(_GOLDEN) + key
        x ^= x >> np.uint64(30)
        x *= np.uint64(_M1)
        x ^= x >> np.uint64(27)
        x *= np.uint64(_M2)
        x ^= x >> np.uint64(31)
    return x


def _uniform(seed: int, label: str, n: int) -> np.ndarray:
    return (_hashes(seed, label, n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _pick(seed: int, label: str, n: int, k: int) -> np.ndarray:
    """Row-wise choices in ``[0, k)``."""
    return (_hashes(seed, label, n) % np.uint64(k)).astype(np.int64)


# -- Planhat team members ------------------------------------------------------------------------
def planhat_user_ids(seed: int, n: int) -> list[str]:
    """The Planhat team members' ids (24 hex digits, like Mongo ObjectIds) for ``seed``.

    The i-th id depends only on ``(seed, i)``, so the Planhat sandbox can seed ``n`` team members
    with ``planhat_user_ids(seed, n)`` for any ``n >= PLANHAT_TEAM_SIZE`` and every valid owner
    id a Copper company carries exists there.
    """
    return [hashlib.sha1(f"planhat-user:{seed}:{i}".encode()).hexdigest()[:24] for i in range(n)]


def invalid_planhat_user_ids(seed: int, n: int) -> list[str]:
    """Well-formed 24-hex ids that no Planhat team member has (owners to be rejected)."""
    return [hashlib.sha1(f"planhat-ghost:{seed}:{i}".encode()).hexdigest()[:24] for i in range(n)]


# -- word lists ----------------------------------------------------------------------------------
FIRST_NAMES = (
    "Ada", "Alan", "Amélie", "Ana", "Björn", "Carla", "Chloé", "Daniel", "Dmitri", "Elena",
    "Emma", "Fatima", "Felix", "Grace", "Hannah", "Hiro", "Ines", "Ivan", "Jonas", "José",
    "Julia", "Kai", "Karin", "Lars", "Leila", "Liam", "Łukasz", "Maria", "Mårten", "Mei",
    "Noah", "Noémie", "Olivia", "Omar", "Priya", "Rafael", "Sara", "Søren", "Tom", "Yuki",
)  # fmt: skip
LAST_NAMES = (
    "Andersson", "Becker", "Brown", "Chen", "Costa", "Dubois", "Fischer", "García", "Haddad",
    "Jensen", "Johansson", "Kim", "Kowalski", "Larsen", "Lee", "Martin", "Moreau", "Müller",
    "Nakamura", "Nguyen", "Novak", "O'Brien", "Okafor", "Patel", "Rossi", "Santos", "Schmidt",
    "Silva", "Smith", "Tanaka", "Wagner", "Yamamoto",
)  # fmt: skip
COMPANY_WORDS = (
    "Northwind", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Soylent", "Tyrell",
    "Cyberdyne", "Wonka", "Oscorp", "Massive", "Aperture", "Gringotts", "Monarch", "Stark",
    "Nakatomi", "Dunder", "Wayne", "Prestige", "Sirius", "Blue Sun", "Virtucon", "Zorg",
)  # fmt: skip
COMPANY_SUFFIXES = ("Inc.", "Labs", "GmbH", "AB", "Ltd", "Group", "Systems", "& Co.")
TITLES = (
    "CEO", "CTO", "VP Sales", "Head of Operations", "Account Executive", "Engineer",
    "Product Manager", "Marketing Lead", "Office Manager", "Founder", None,
)  # fmt: skip
CITIES = (
    ("San Francisco", "CA", "94105", "US"), ("New York", "NY", "10001", "US"),
    ("Berlin", None, "10115", "DE"), ("Paris", None, "75002", "FR"),
    ("Stockholm", None, "111 22", "SE"), ("Toronto", "ON", "M5H 2N2", "CA"),
    ("Tōkyō", None, "100-0001", "JP"), ("São Paulo", "SP", "01310-100", None),
)  # fmt: skip
STREETS = ("Main Street", "Market St", "Rue de Rivoli", "Unter den Linden", "Kungsgatan", "Elm Ave")
TAGS = ("vip", "trial", "webinar", "partner", "churn-risk", "enterprise", "q4-push")
NOTE_TEXTS = (
    "Discussed Q3 plan & pricing; they're keen",
    'Sent the "Enterprise" deck <draft v2>',
    "Left a voicemail, will retry Tuesday",
    "Demo went well: 5 seats → 25 seats?",
    "Renewal call — asked about SSO & SCIM",
    "Follow-up: contract sent to legal",
)  # fmt: skip
DEALS = ("Seats", "Expansion", "Pilot", "Renewal", "Add-on")
INTERESTS = ("Analytics", "Integrations", "Security", "Mobile", "Reporting")
PLANS = ("Free", "Starter", "Pro", "Enterprise")
OPPORTUNITY_TYPES = ("New Business", "Upsell", "Renewal")
REGIONS = ("EMEA", "AMER", "APAC")


@functools.lru_cache(maxsize=8192)
def ascii_slug(text: str) -> str:
    """Lower-case ASCII letters and digits of ``text`` (accents folded): e-mail local parts."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "", folded.lower())


def format_close_date(ts: int, fmt: str = "M/D/YYYY") -> str:
    """Copper's locale-dependent close date text, e.g. ``"1/14/2020"`` (no zero padding)."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC).date()
    return f"{d.day}/{d.month}/{d.year}" if fmt == "D/M/YYYY" else f"{d.month}/{d.day}/{d.year}"


def _midnight(ts: int) -> int:
    return ts - ts % DAY


# -- metadata ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CopperSeedMetadata:
    """The account's configuration as the metadata endpoints serve it, plus lookup helpers."""

    account: dict[str, Any]
    users: list[dict[str, Any]]
    custom_field_definitions: list[dict[str, Any]]
    activity_types: dict[str, list[dict[str, Any]]]
    pipelines: list[dict[str, Any]]
    lead_statuses: list[dict[str, Any]]
    customer_sources: list[dict[str, Any]]
    contact_types: list[dict[str, Any]]
    loss_reasons: list[dict[str, Any]]
    planhat_owner_ids: list[str]
    """Valid owner ids carried by companies: ``planhat_user_ids(seed, PLANHAT_TEAM_SIZE)``."""
    invalid_planhat_owner_ids: list[str]
    close_date_format: str = "M/D/YYYY"

    @property
    def pipeline_stages(self) -> list[dict[str, Any]]:
        return [
            {**stage, "pipeline_id": pipeline["id"]}
            for pipeline in self.pipelines
            for stage in pipeline["stages"]
        ]

    def custom_field(self, name: str, available_on: str | None = None) -> dict[str, Any]:
        """The definition named ``name`` (on ``available_on`` when names repeat across types)."""
        for definition in self.custom_field_definitions:
            if definition["name"] == name and (
                available_on is None or available_on in definition["available_on"]
            ):
                return definition
        raise KeyError(f"no custom field {name!r} on {available_on or 'any type'}")

    def option_id(self, field_name: str, option: str, available_on: str | None = None) -> int:
        for item in self.custom_field(field_name, available_on)["options"]:
            if item["name"] == option:
                return item["id"]
        raise KeyError(f"{field_name!r} has no option {option!r}")

    def activity_type(self, name: str) -> dict[str, Any]:
        for item in [*self.activity_types["user"], *self.activity_types["system"]]:
            if item["name"] == name:
                return item
        raise KeyError(name)

    def named(self, kind: str, name: str) -> dict[str, Any]:
        """An item of ``lead_statuses``, ``contact_types``, ... by name."""
        return next(item for item in getattr(self, kind) if item["name"] == name)


CUSTOM_FIELDS: tuple[tuple[str, str, tuple[str, ...], dict[str, Any]], ...] = (
    ("User ID", "String", ("person",), {}),
    ("Account ID", "String", ("company",), {}),
    ("Lead Score", "Float", ("lead",), {}),
    ("Plan", "Dropdown", ("person",), {"options": PLANS}),
    ("ARR", "Currency", ("company",), {"currency": "USD"}),
    ("Opportunity Type", "Dropdown", ("opportunity",), {"options": OPPORTUNITY_TYPES}),
    ("assignee_planhat_id", "String", ("company",), {}),
    ("Notes", "Text", ("lead", "person", "company", "opportunity"), {}),
    ("Interests", "MultiSelect", ("lead", "person"), {"options": INTERESTS}),
    ("Newsletter", "Checkbox", ("lead", "person"), {}),
    ("Next Renewal", "Date", ("company", "opportunity"), {}),
    ("Discount", "Percentage", ("opportunity",), {}),
    ("LinkedIn Profile", "URL", ("lead", "person"), {}),
    ("Contract Value (EUR)", "Currency", ("opportunity",), {"currency": "EUR"}),
    ("Region", "Dropdown", ("company",), {"options": REGIONS}),
    ("Region", "String", ("person",), {}),  # one name, two definitions: key by id
    ("Partner Company", "Connect", ("opportunity",), {"connects": "Partner Opportunities"}),
    ("Partner Opportunities", "Connect", ("company",), {"connects": "Partner Company"}),
)
"""Every Copper data type, including the names the example configuration maps."""


def _custom_field_definitions(dice: Dice) -> list[dict[str, Any]]:
    base = dice.between(180_000, 680_000)
    option_ids = iter(range(base * 3, base * 3 + 10_000, 11))
    ids = {spec[0]: base + 7 * i for i, spec in enumerate(CUSTOM_FIELDS)}
    definitions = []
    for i, (name, data_type, available_on, extra) in enumerate(CUSTOM_FIELDS):
        definition: dict[str, Any] = {
            "id": base + 7 * i,
            "name": name,
            "canonical_name": None,
            "data_type": data_type,
            "available_on": list(available_on),
            "is_filterable": data_type not in ("Text", "URL", "Connect"),
        }
        if "options" in extra:
            definition["options"] = [
                {"id": next(option_ids), "name": option, "rank": rank}
                for rank, option in enumerate(extra["options"])
            ]
        if "currency" in extra:
            definition["currency"] = extra["currency"]
        if "connects" in extra:
            definition["connected_id"] = ids[extra["connects"]]
        definitions.append(definition)
    return definitions


def _activity_types(dice: Dice) -> dict[str, list[dict[str, Any]]]:
    base = dice.between(160_000, 990_000)

    def user(type_id: int, name: str, disabled: bool = False) -> dict[str, Any]:
        return {
            "id": type_id,
            "category": "user",
            "name": name,
            "is_disabled": disabled,
            "count_as_interaction": name != "Note",
        }

    def system(type_id: int, name: str) -> dict[str, Any]:
        return {
            "id": type_id,
            "category": "system",
            "name": name,
            "is_disabled": False,
            "count_as_interaction": False,
        }

    return {
        "user": [
            user(0, "Note"),
            user(base, "Phone Call"),
            user(base + 1, "Meeting"),
            user(base + 2, "To Do", disabled=True),
            user(base + 17, "Demo Given"),
        ],
        "system": [
            system(1, "Property Changed"),
            system(2, "User Assigned"),
            system(3, "Pipeline Stage Changed"),
            system(6, "Email"),
            system(8, "Entity Created"),
        ],
    }


def _pipelines(dice: Dice) -> list[dict[str, Any]]:
    pipeline_id = dice.between(200_000, 900_000)
    stage_id = iter(range(pipeline_id * 4, pipeline_id * 4 + 1000, 3))

    def stages(spec: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
        return [{"id": next(stage_id), "name": n, "win_probability": p} for n, p in spec]

    sales = [("Qualified", 10), ("Follow-up", 25), ("Presentation", 50), ("Negotiation", 80)]
    renewals = [("Upcoming", 60), ("In Review", 75), ("Committed", 95)]
    return [
        {"id": pipeline_id, "name": "Sales", "stages": stages(sales)},
        {"id": pipeline_id + 1, "name": "Renewals", "stages": stages(renewals)},
    ]


def _named_list(dice: Dice, names: Sequence[str], **extra: Any) -> list[dict[str, Any]]:
    base = dice.between(100_000, 999_000)
    return [{"id": base + i, "name": name, **extra} for i, name in enumerate(names)]


def _users(seed: int, n: int, owner_email: str) -> list[dict[str, Any]]:
    dice = Dice(seed, _salt("users"))
    base = dice.between(600_000, 990_000)
    users = []
    for i in range(n):
        first, last = dice.choice(FIRST_NAMES), dice.choice(LAST_NAMES)
        email = (
            owner_email
            if i == 0
            else f"{ascii_slug(first)}.{ascii_slug(last)}{i}@copper-team.example"
        )
        users.append({"id": base + 13 * i, "name": f"{first} {last}", "email": email})
    return users


def build_metadata(
    seed: int, scale: float, user_email: str, close_date_format: str = "M/D/YYYY"
) -> CopperSeedMetadata:
    """The account's metadata: per-seed ids (Copper's ids are per account), fixed names."""
    dice = Dice(seed, _salt("metadata"))
    statuses = _named_list(dice, ("New", "Unqualified", "Contacted", "Qualified", "Junk"))
    statuses = [
        {**status, "order": i + 1, "is_default": i == 0} for i, status in enumerate(statuses)
    ]
    return CopperSeedMetadata(
        account={
            "id": dice.between(100_000, 999_999),
            "name": "Sandbox Copper Account",
            "primary_timezone": "America/New_York",
            "settings": {"setting_team_permissions_enabled": False},
        },
        users=_users(seed, max(3, min(400, round(25 * scale))), user_email),
        custom_field_definitions=_custom_field_definitions(dice),
        activity_types=_activity_types(dice),
        pipelines=_pipelines(dice),
        lead_statuses=statuses,
        customer_sources=_named_list(
            dice, ("Email", "Cold Call", "Advertising", "Partner Referral", "Événement")
        ),
        # Copper lets an account rename its contact types; this account calls its paying
        # accounts "Customer" (the example configuration's account segment keys on it).
        contact_types=_named_list(
            dice, ("Potential Customer", "Customer", "Partner", "Uncategorized", "Other")
        ),
        loss_reasons=_named_list(dice, ("Price", "Competitor", "Timing", "No Budget")),
        planhat_owner_ids=planhat_user_ids(seed, PLANHAT_TEAM_SIZE),
        invalid_planhat_owner_ids=invalid_planhat_user_ids(seed, 2),
        close_date_format=close_date_format,
    )


# -- columns ---------------------------------------------------------------------------------
def _ids(seed: int, label: str, base: int, n: int) -> np.ndarray:
    """Strictly increasing ids with gaps; row 0 gets ``base`` exactly."""
    jitter = _pick(seed, f"{label}:id", n, 3)
    jitter[:1] = 0
    return base + 3 * np.arange(n, dtype=np.int64) + jitter


def _timeline(seed: int, label: str, n: int, now: int, burst: int) -> tuple[np.ndarray, np.ndarray]:
    """``date_created`` (non-decreasing in the row) and ``date_modified`` (>= created).

    Shapes the data to catch cursor bugs: ~20% of rows share their creation second with the
    previous row, ~35% were never modified (so share it in ``date_modified`` too), ``burst``
    rows were touched by one mass update in the same second (a tie group larger than a page),
    about 1% were created and 2% modified on ``now``'s UTC day, and row 0 predates 2024.
    """
    span = max(now - SEED_START, DAY)
    today = max(SEED_START, _midnight(now))
    rows = np.arange(n)
    created = SEED_START + (np.sort(_uniform(seed, f"{label}:created", n)) * span).astype(np.int64)
    tie = _uniform(seed, f"{label}:tie", n) < 0.2
    tie[0] = False
    created = created[np.maximum.accumulate(np.where(tie, 0, rows))]
    fresh = max(1, n // 100)
    tail = today + (np.sort(_uniform(seed, f"{label}:fresh", fresh)) * (now - today)).astype(
        np.int64
    )
    created[-fresh:] = np.maximum(created[-fresh:], tail)
    created[0] = SEED_START
    delay = ((now - created) * _uniform(seed, f"{label}:delay", n) ** 3).astype(np.int64)
    unmodified = _uniform(seed, f"{label}:unmodified", n) < 0.35
    modified = np.where(unmodified, created, created + delay)
    touched_today = _uniform(seed, f"{label}:today", n) < 0.02
    today_at = today + (_uniform(seed, f"{label}:today-at", n) * (now - today)).astype(np.int64)
    modified = np.where(touched_today, np.maximum(created, today_at), modified)
    if burst > 1:
        at = SEED_START + int(span * 0.62)
        candidates = rows[1:][created[1:] <= at]
        order = np.argsort(_hashes(seed, f"{label}:burst", n)[candidates], kind="stable")
        modified[candidates[order[:burst]]] = at
    modified[0] = created[0]
    modified[-1] = max(int(created[-1]), today + (now - today) // 2)
    return created, modified


@dataclass
class SeedTable:
    """One object's generated rows: search columns as arrays and a row -> record function."""

    name: str
    columns: dict[str, np.ndarray]
    record: Callable[[int], dict[str, Any]]
    text_key: Callable[[str, np.ndarray], list[str] | None] = lambda name, rows: None
    """Sort keys of ``field`` for ``rows`` computed without building records (name sorts)."""

    def __len__(self) -> int:
        return len(self.columns["id"])


@dataclass
class _Names:
    """First/last name parts of leads or people, by row (pinned rows override the lists)."""

    first: np.ndarray
    last: np.ndarray
    pinned: dict[int, tuple[str | None, str | None, str]] = field(default_factory=dict)

    def parts(self, row: int) -> tuple[str | None, str | None, str]:
        if row in self.pinned:
            return self.pinned[row]
        first, last = FIRST_NAMES[self.first[row]], LAST_NAMES[self.last[row]]
        return first, last, f"{first} {last}"

    def text_key(self, fld: str, rows: np.ndarray) -> list[str] | None:
        """``name``/``first_name``/``last_name`` of ``rows`` without building records."""
        if fld not in ("name", "first_name", "last_name"):
            return None
        firsts = np.asarray(FIRST_NAMES, dtype=object)[self.first[rows]].tolist()
        lasts = np.asarray(LAST_NAMES, dtype=object)[self.last[rows]].tolist()
        if fld == "first_name":
            values = firsts
        elif fld == "last_name":
            values = lasts
        else:
            values = [f"{first} {last}" for first, last in zip(firsts, lasts, strict=True)]
        index = {"first_name": 0, "last_name": 1, "name": 2}[fld]
        for i in np.flatnonzero(np.isin(rows, list(self.pinned))).tolist():
            values[i] = self.pinned[int(rows[i])][index] or ""
        return values


# -- the seed ------------------------------------------------------------------------------------
class CopperSeed:
    """All generated Copper data for one ``(seed, scale, now)``."""

    def __init__(
        self,
        seed: int = 0,
        scale: float = 1.0,
        now: int = SEED_START + 400 * DAY,
        *,
        user_email: str = "sandbox@example.com",
        close_date_format: str = "M/D/YYYY",
        objects: Mapping[str, SeedObject] | None = None,
    ) -> None:
        self.seed = seed
        self.now = now
        self.objects: Mapping[str, SeedObject] = SEED_OBJECTS if objects is None else objects
        """Name -> how each object is seeded (default: ``SEED_OBJECTS``)."""
        self.metadata = build_metadata(seed, scale, user_email, close_date_format)
        self.counts = {
            name: max(spec.min_count, round(spec.base_count * scale))
            for name, spec in self.objects.items()
        }
        self._user_ids = tuple(user["id"] for user in self.metadata.users)
        """Frozen: tests may replace the users list without changing generated records."""
        self._fields_on = {
            kind: [d for d in self.metadata.custom_field_definitions if kind in d["available_on"]]
            for kind in ("lead", "person", "company", "opportunity")
        }
        self._build_columns()
        self.tables = {name: self._seed_table(spec) for name, spec in self.objects.items()}
        self.edge_cases = self._edge_cases()

    def _seed_table(self, spec: SeedObject) -> SeedTable:
        text_key = spec.text_key
        return SeedTable(
            spec.name,
            self._cols[spec.name],
            functools.partial(spec.record, self),
            (lambda fld, rows: text_key(self, fld, rows)) if text_key else lambda fld, rows: None,
        )

    # -- columns -------------------------------------------------------------------------------
    def _build_columns(self) -> None:
        s, now, n = self.seed, self.now, self.counts
        self._cols: dict[str, dict[str, np.ndarray]] = {}
        for name, spec in self.objects.items():
            burst = min(250, n[name] // 4) if spec.mass_update else 0
            created, modified = _timeline(s, name, n[name], now, burst)
            self._cols[name] = {
                "id": _ids(s, name, spec.id_base, n[name]),
                "date_created": created,
                "date_modified": modified,
            }
        self.ids = {name: cols["id"] for name, cols in self._cols.items()}
        self._lead_names = _Names(
            _pick(s, "leads:first", n["leads"], len(FIRST_NAMES)).astype(np.int16),
            _pick(s, "leads:last", n["leads"], len(LAST_NAMES)).astype(np.int16),
            {0: ("Zoë", "Ångström", "Zoë Ångström"), 1: ("雷", "李", "李雷")},
        )
        self._person_names = _Names(
            _pick(s, "people:first", n["people"], len(FIRST_NAMES)).astype(np.int16),
            _pick(s, "people:last", n["people"], len(LAST_NAMES)).astype(np.int16),
            {0: ("Zoë", "Ångström", "Zoë Ångström"), 1: ("芳", "王", "王芳")},
        )
        self._company_of_person = _pick(s, "people:company", n["people"], n["companies"]).astype(
            np.int32
        )
        for name, spec in self.objects.items():
            if spec.columns is not None:
                self._cols[name].update(spec.columns(self))
        self._partner_company = np.where(
            np.arange(n["opportunities"]) % 9 == 2,
            _pick(s, "opportunities:partner", n["opportunities"], n["companies"]),
            -1,
        )
        self._partner_opps: dict[int, list[int]] | None = None

    def _lead_columns(self) -> dict[str, np.ndarray]:
        """Whether each lead is converted: converted leads leave the default search."""
        n = self.counts
        lead_rows = np.arange(n["leads"])
        converted = (lead_rows < n["people"]) & ((lead_rows == 4) | (lead_rows % 25 == 4))
        return {"converted": converted.astype(np.int8)}  # the rule of _converted_into, vectorised

    def _activity_columns(self) -> dict[str, np.ndarray]:
        """Parents, types and the activity date: what the activities search filters on."""
        s, n, cols = self.seed, self.counts["activities"], self._cols["activities"]
        user_types = [t["id"] for t in self.metadata.activity_types["user"]]
        system_types = [t["id"] for t in self.metadata.activity_types["system"]]
        parent_type = np.searchsorted(
            np.array([0.55, 0.80, 0.90]), _uniform(s, "activities:parent", n), side="right"
        ).astype(np.int8)
        parent_row = _hashes(s, "activities:parent-row", n)
        parent_id = np.zeros(n, dtype=np.int64)
        for code, name in enumerate(("people", "leads", "companies", "opportunities")):
            mask = parent_type == code
            parent_id[mask] = self.ids[name][
                (parent_row[mask] % np.uint64(self.counts[name])).astype(np.int64)
            ]
        category = (_uniform(s, "activities:category", n) < 0.25).astype(np.int8)
        user_pick = np.searchsorted(
            np.array([0.35, 0.60, 0.85, 0.90]), _uniform(s, "activities:user-type", n), "right"
        )
        type_id = np.where(
            category == 0,
            np.array(user_types)[user_pick],
            np.array(system_types)[_pick(s, "activities:system-type", n, len(system_types))],
        ).astype(np.int64)
        self._pin_activities(parent_type, parent_id, category, type_id, user_types)
        created = cols["date_created"]
        back = (category == 0) & (_uniform(s, "activities:backdated", n) < 0.08)
        shift = 3600 + (_uniform(s, "activities:shift", n) * 10 * DAY).astype(np.int64)
        back[-1] = True  # the newest row: a meeting logged now, dated six days ago
        shift[-1] = 6 * DAY + 3600
        activity_date = np.where(back, created - shift, created)
        return dict(
            activity_date=activity_date,
            # Copper: a user activity's date_modified is its activity_date, not the edit time.
            date_modified=np.where(category == 0, activity_date, created),
            parent_type=parent_type,
            parent_id=parent_id,
            type_category=category,
            type_id=type_id,
        )

    def _pin_activities(
        self,
        parent_type: np.ndarray,
        parent_id: np.ndarray,
        category: np.ndarray,
        type_id: np.ndarray,
        user_types: list[int],
    ) -> None:
        note, call, meeting, disabled, custom = user_types
        pins = [  # (parent type code, parent object, parent row, category, type id)
            (0, "people", 0, 0, note),
            (1, "leads", 0, 0, call),
            (2, "companies", 0, 0, meeting),
            (3, "opportunities", 0, 0, note),
            (0, "people", 3, 1, 1),
            (0, "people", 3, 1, 6),
            (1, "leads", 3, 1, 8),
            (3, "opportunities", 0, 1, 3),
            (0, "people", 4, 0, disabled),
            (0, "people", 4, 0, custom),
            (1, "leads", 2, 0, meeting),
        ]
        for row, (code, obj, parent_row, cat, tid) in enumerate(pins):
            parent_type[row], parent_id[row] = code, self.ids[obj][parent_row]
            category[row], type_id[row] = cat, tid
        last = len(parent_type) - 1
        parent_type[last], parent_id[last] = 0, self.ids["people"][3]
        category[last], type_id[last] = 0, meeting

    # -- shared pieces (also for records of objects declared elsewhere) ----------------------------
    def dice(self, label: str, row: int) -> Dice:
        """The random stream of one record: keyed by the seed, a label and the row."""
        return Dice(self.seed, _salt(label), row)

    def dates(self, obj: str, row: int) -> tuple[int, int]:
        """``(date_created, date_modified)`` of a row of ``obj``, as generated."""
        cols = self._cols[obj]
        return int(cols["date_created"][row]), int(cols["date_modified"][row])

    @property
    def user_ids(self) -> tuple[int, ...]:
        """The Copper users' ids records are assigned to."""
        return self._user_ids

    def _assignee(self, dice: Dice) -> int | None:
        return None if dice.chance(0.1) else dice.choice(self._user_ids)

    @staticmethod
    def _address(dice: Dice) -> dict[str, Any] | None:
        if dice.chance(0.15):
            return None
        city, state, postal, country = dice.choice(CITIES)
        street = f"{dice.between(1, 999)} {dice.choice(STREETS)}"
        return {
            "street": street,
            "city": city,
            "state": state,
            "postal_code": postal,
            "country": country,
        }

    @staticmethod
    def _phones(dice: Dice) -> list[dict[str, str]]:
        count = dice.choice((0, 1, 1, 2))
        return [
            {
                "number": f"+1 415 555 {dice.between(1000, 9999)}",
                "category": dice.choice(("work", "mobile", "home", "other")),
            }
            for _ in range(count)
        ]

    @staticmethod
    def _tags(dice: Dice) -> list[str]:
        return dice.sample(TAGS, dice.choice((0, 0, 1, 2)))

    def _custom_fields(
        self, object_type: str, dice: Dice, row: int, fixed: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """``[{custom_field_definition_id, value}]``: not every field listed, some values null.

        ``fixed`` maps field names to a value (``_ABSENT`` drops the entry).
        """
        fixed = fixed or {}
        out = []
        for definition in self._fields_on[object_type]:
            name = definition["name"]
            if name in fixed:
                value = fixed[name]
                if value is _ABSENT:
                    continue
            elif dice.chance(0.08):
                continue  # not every record lists every field
            elif dice.chance(0.12):
                value = [] if definition["data_type"] in ("MultiSelect", "Connect") else None
            else:
                value = self._custom_value(definition, dice, row)
            out.append({"custom_field_definition_id": definition["id"], "value": value})
        return out

    def _custom_value(self, definition: dict[str, Any], dice: Dice, row: int) -> Any:
        kind = definition["data_type"]
        options = [o["id"] for o in definition.get("options", [])]
        if kind == "String":
            return f"{definition['name'][:3].upper()}-{dice.between(1000, 99999)}"
        if kind == "Text":
            return dice.choice(NOTE_TEXTS)
        if kind == "URL":
            return f"https://www.linkedin.example/in/member-{row}"
        if kind in ("Float", "Currency"):
            return round(dice.random() * 100_000, 2)
        if kind == "Percentage":
            return dice.between(0, 40)
        if kind == "Checkbox":
            return dice.chance(0.5)
        if kind == "Date":
            return _midnight(self.now) + DAY * dice.between(-200, 400)
        if kind == "Dropdown":
            return dice.choice(options)
        if kind == "MultiSelect":
            return sorted(dice.sample(options, dice.between(0, 3)))
        return []  # Connect: filled in by the record's own rules

    def _company_domain(self, row: int) -> str | None:
        if row == 1 or row % 11 == 1:
            return None
        word = ascii_slug(COMPANY_WORDS[row % len(COMPANY_WORDS)])
        return f"{word}-{row}.example.com"

    def _company_name(self, row: int) -> str:
        """Names repeat across rows (like real CRMs); row 4 is the unicode one."""
        if row == 4:
            return "Škoda & Søn Ålesund"
        word = COMPANY_WORDS[row % len(COMPANY_WORDS)]
        return f"{word} {COMPANY_SUFFIXES[(row * 7 + self.seed) % len(COMPANY_SUFFIXES)]}"

    def lead_email(self, row: int) -> str | None:
        """The lead's e-mail (``None`` for row 2 and every 9th row)."""
        if row == 2 or row % 9 == 5:
            return None
        first, last, _ = self._lead_names.parts(row)
        local = ascii_slug(f"{first}.{last}") or f"lead{row}"
        return f"{local}{row}@{ascii_slug(COMPANY_WORDS[row % 7])}-mail.example.org"

    # -- records -------------------------------------------------------------------------------
    def lead(self, row: int) -> dict[str, Any]:
        """A lead: ``email`` is one object or null (rows 2, 5, 14, ...); rows 0-1 unicode names;
        rows 4, 29, 54, ... converted into the person of their row (out of default searches)."""
        dice = self.dice("lead", row)
        created, modified = self.dates("leads", row)
        first, last, name = self._lead_names.parts(row)
        status = dice.choice(self.metadata.lead_statuses)
        email = self.lead_email(row)
        converted = self._converted_into(row)
        value = None if dice.chance(0.3) else 500 * dice.between(1, 200)
        fixed = {"Lead Score": round(dice.random() * 100, 1)} if row < 3 else None
        return {
            "id": int(self.ids["leads"][row]),
            "name": name,
            "prefix": None,
            "first_name": first,
            "middle_name": None,
            "last_name": last,
            "suffix": None,
            "address": self._address(dice),
            "assignee_id": self._assignee(dice),
            "company_name": None if dice.chance(0.2) else self._company_name(dice.below(500)),
            "customer_source_id": None
            if dice.chance(0.2)
            else dice.choice(self.metadata.customer_sources)["id"],
            "details": None if dice.chance(0.6) else dice.choice(NOTE_TEXTS),
            "email": None
            if email is None
            else {"email": email, "category": dice.choice(("work", "personal", "other"))},
            "interaction_count": dice.between(0, 12),
            "monetary_unit": None if value is None else "USD",
            "monetary_value": value,
            "converted_unit": None,
            "converted_value": None,
            "converted_contact_id": None if converted is None else converted[0],
            "converted_opportunity_id": None,
            "converted_at": None if converted is None else converted[1],
            "socials": [],
            "status": status["name"],
            "status_id": status["id"],
            "tags": self._tags(dice),
            "title": dice.choice(TITLES),
            "websites": [],
            "phone_numbers": self._phones(dice),
            "custom_fields": self._custom_fields("lead", dice, row, fixed),
            "date_created": created,
            "date_modified": modified,
            "date_last_contacted": None if dice.chance(0.5) else dice.between(created, modified),
        }

    def _person_company(self, row: int) -> int | None:
        """The person's company id: ``None`` (row 5, every 17th) or unknown (row 6, every 19th)."""
        if row == 5 or row % 17 == 5:
            return None
        if row == 6 or row % 19 == 6:
            return UNKNOWN_COMPANY_BASE + row  # not in the companies data set
        return int(self.ids["companies"][self._company_of_person[row]])

    def _person_emails(self, row: int, dice: Dice, company_row: int | None) -> list[dict]:
        if row == 2 or row % 13 == 2:
            return []
        first, last, _ = self._person_names.parts(row)
        local = ascii_slug(f"{first}.{last}") or f"person{row}"
        domain = None if company_row is None else self._company_domain(company_row)
        primary = f"{local}.{row}@{domain or 'mail.example.net'}"
        if row < self.counts["leads"] and row % 10 == 3:
            primary = self.lead_email(row) or primary  # shared with the lead of the same row
        emails = [{"email": primary, "category": "work"}]
        if row == 7 or dice.chance(0.1):
            emails.append({"email": f"{local}{row}@personal.example.net", "category": "personal"})
        return emails

    def person(self, row: int) -> dict[str, Any]:
        """A person: ``emails`` may be empty; the company may be null or not a seeded company;
        rows 3, 13, 23, ... share the e-mail of the lead of the same row."""
        dice = self.dice("person", row)
        created, modified = self.dates("people", row)
        first, last, name = self._person_names.parts(row)
        company_id = self._person_company(row)
        known = company_id is not None and company_id < UNKNOWN_COMPANY_BASE
        company_row = int(self._company_of_person[row]) if known else None
        converted, lead_created = self._converted_from(row)
        fixed: dict[str, Any] = {"User ID": f"usr_{self.seed}_{row:07d}"}
        if row % 15 == 14:
            fixed["User ID"] = None
        if row == 8:
            fixed["Interests"] = []
        return {
            "id": int(self.ids["people"][row]),
            "name": name,
            "prefix": None,
            "first_name": first,
            "middle_name": None,
            "last_name": last,
            "suffix": None,
            "address": self._address(dice),
            "assignee_id": self._assignee(dice),
            "company_id": company_id,
            "company_name": self._company_name(company_row)
            if company_row is not None
            else (None if company_id is None else "Gone Away Ltd"),
            "contact_type_id": dice.choice(self.metadata.contact_types)["id"],
            "details": None if dice.chance(0.7) else dice.choice(NOTE_TEXTS),
            "emails": self._person_emails(row, dice, company_row),
            "phone_numbers": self._phones(dice),
            "socials": [],
            "tags": self._tags(dice),
            "title": dice.choice(TITLES),
            "websites": [],
            "custom_fields": self._custom_fields("person", dice, row, fixed),
            "date_created": created,
            "date_modified": modified,
            "date_last_contacted": None if dice.chance(0.5) else dice.between(created, modified),
            "interaction_count": dice.between(0, 30),
            "leads_converted_from": converted,
            "date_lead_created": lead_created,
        }

    def _converted_into(self, lead_row: int) -> tuple[int, int] | None:
        """``(person id, converted_at)`` of a lead converted into the person of its row."""
        if lead_row >= self.counts["people"] or not (lead_row == 4 or lead_row % 25 == 4):
            return None
        lead_created = int(self._cols["leads"]["date_created"][lead_row])
        when = max(lead_created, int(self._cols["people"]["date_created"][lead_row]))
        return int(self.ids["people"][lead_row]), when

    def _converted_from(self, row: int) -> tuple[list[dict[str, Any]], int | None]:
        """Leads this person was converted from, and when the first was created.

        Row 4 and every 25th: the lead of the same row, still listed among leads. Row 9: a lead
        that no longer exists (Copper may remove a lead once converted).
        """
        if row == 9:
            return [{"lead_id": MISSING_LEAD_ID, "converted_timestamp": None}], None
        converted = self._converted_into(row) if row < self.counts["leads"] else None
        if converted is not None:
            lead_created = int(self._cols["leads"]["date_created"][row])
            lead_id = int(self.ids["leads"][row])
            return [{"lead_id": lead_id, "converted_timestamp": converted[1]}], lead_created
        return [], None

    def company(self, row: int) -> dict[str, Any]:
        """A company: ``email_domain`` may be null; ``assignee_planhat_id`` holds a team member's
        Planhat id, an id Planhat does not know (rows 2, 25, 48, ...), null, or is missing."""
        dice = self.dice("company", row)
        created, modified = self.dates("companies", row)
        owners = self.metadata.planhat_owner_ids
        owner: Any = owners[row % len(owners)]
        if row == 2 or row % 23 == 2:
            owner = self.metadata.invalid_planhat_owner_ids[row % 2]
        elif row % 17 == 9:
            owner = None  # no owner assigned
        fixed: dict[str, Any] = {
            "Account ID": f"ACC-{self.seed}-{row:06d}",
            "assignee_planhat_id": _ABSENT if row == 3 else owner,
            "Partner Opportunities": self._partner_opportunity_ids(row),
        }
        if row % 29 == 5:
            fixed["Account ID"] = None
        domain = self._company_domain(row)
        return {
            "id": int(self.ids["companies"][row]),
            "name": self._company_name(row),
            "address": None if row == 3 else self._address(dice),
            "assignee_id": self._assignee(dice),
            "contact_type_id": self.metadata.named("contact_types", "Customer")["id"]
            if row == 0 or dice.chance(0.45)
            else dice.choice(self.metadata.contact_types)["id"],
            "details": None if dice.chance(0.6) else dice.choice(NOTE_TEXTS),
            "email_domain": domain,
            "phone_numbers": self._phones(dice),
            "primary_contact_id": None
            if dice.chance(0.3)
            else int(self.ids["people"][dice.below(self.counts["people"])]),
            "socials": [],
            "tags": self._tags(dice),
            "websites": []
            if domain is None
            else [{"url": f"https://{domain}", "category": "work"}],
            "custom_fields": self._custom_fields("company", dice, row, fixed),
            "interaction_count": dice.between(0, 50),
            "date_created": created,
            "date_modified": modified,
        }

    def _partner_opportunity_ids(self, company_row: int) -> list[int]:
        if self._partner_opps is None:
            index: dict[int, list[int]] = {}
            for opp_row in np.flatnonzero(self._partner_company >= 0):
                company = int(self._partner_company[opp_row])
                index.setdefault(company, []).append(int(self.ids["opportunities"][opp_row]))
            self._partner_opps = index
        return self._partner_opps.get(company_row, [])

    def _opportunity_type(self, row: int, dice: Dice) -> Any:
        """Row 1: blank (null); row 2: the field is missing; every 7th: blank; else an option."""
        if row == 2:
            return _ABSENT
        if row == 1 or row % 7 == 1:
            return None
        # Rows 0 and 6: two opportunities of one type on one company.
        name = "New Business" if row in (0, 6) else dice.choice(OPPORTUNITY_TYPES)
        return self.metadata.option_id("Opportunity Type", name)

    def opportunity(self, row: int) -> dict[str, Any]:
        """An opportunity: ``close_date`` is locale text; some have a blank type (skipped)."""
        dice = self.dice("opportunity", row)
        created, modified = self.dates("opportunities", row)
        company_row = 0 if row in (0, 6) else dice.below(self.counts["companies"])
        pipeline = dice.choice(self.metadata.pipelines)
        stage = dice.choice(pipeline["stages"])
        status = STATUSES[row] if row < 4 else dice.choice((*STATUSES, "Open", "Open"))
        partner = int(self._partner_company[row])
        fixed = {
            "Opportunity Type": self._opportunity_type(row, dice),
            "Partner Company": [] if partner < 0 else [int(self.ids["companies"][partner])],
        }
        close = created + DAY * dice.between(20, 200)
        if row == 3:
            close = JAN_14_2024  # single-digit month, two-digit day
        value = 500 * dice.between(2, 400)
        deal = dice.choice(DEALS)
        return {
            "id": int(self.ids["opportunities"][row]),
            "name": f"{self._company_name(company_row)}: {deal} #{row}",
            "assignee_id": self._assignee(dice),
            "close_date": None
            if row % 31 == 30
            else format_close_date(close, self.metadata.close_date_format),
            "company_id": int(self.ids["companies"][company_row]),
            "company_name": self._company_name(company_row),
            "customer_source_id": None
            if dice.chance(0.3)
            else dice.choice(self.metadata.customer_sources)["id"],
            "details": None if dice.chance(0.6) else dice.choice(NOTE_TEXTS),
            "loss_reason_id": dice.choice(self.metadata.loss_reasons)["id"]
            if status == "Lost" and not dice.chance(0.2)
            else None,
            "monetary_value": value,
            "monetary_unit": "USD",
            "converted_unit": None,
            "converted_value": None,
            "pipeline_id": pipeline["id"],
            "pipeline_stage_id": stage["id"],
            "pipeline_is_revenue": pipeline["name"] == "Sales",
            "pipeline_type": "opportunity",
            "primary_contact_id": None
            if row % 13 == 12
            else int(self.ids["people"][dice.below(self.counts["people"])]),
            "priority": dice.choice(PRIORITIES),
            "status": status,
            "tags": self._tags(dice),
            "interaction_count": dice.between(0, 20),
            "win_probability": stage["win_probability"],
            "date_stage_changed": dice.between(created, modified),
            "date_last_contacted": None,
            "leads_converted_from": [],
            "date_lead_created": None,
            "date_created": created,
            "date_modified": modified,
            "custom_fields": self._custom_fields("opportunity", dice, row, fixed),
        }

    def activity(self, row: int) -> dict[str, Any]:
        """An activity: parent and type from the columns; ``details`` HTML-escaped, as Copper's."""
        dice = self.dice("activity", row)
        cols = self._cols["activities"]
        category = CATEGORIES[cols["type_category"][row]]
        type_id = int(cols["type_id"][row])
        details, old, new = None, None, None
        if category == "user":
            details = html.escape(dice.choice(NOTE_TEXTS))
        elif type_id == 1:
            old, new = {"value": "New"}, {"value": "Qualified"}
        elif type_id == 3:
            stages = self.metadata.pipelines[0]["stages"]
            old, new = ({"id": s["id"], "name": s["name"]} for s in dice.sample(stages, 2))
        elif type_id == 6:
            details = html.escape(f"Re: {dice.choice(NOTE_TEXTS)}")
        return {
            "id": int(cols["id"][row]),
            "parent": {
                "id": int(cols["parent_id"][row]),
                "type": PARENT_TYPES[cols["parent_type"][row]],
            },
            "type": {"id": type_id, "category": category},
            "user_id": dice.choice(self._user_ids),
            "details": details,
            "activity_date": int(cols["activity_date"][row]),
            "old_value": old,
            "new_value": new,
            "date_created": int(cols["date_created"][row]),
            "date_modified": int(cols["date_modified"][row]),
        }

    # -- documentation of the edge cases ----------------------------------------------------------
    def _edge_cases(self) -> dict[str, Any]:
        """Where each edge case lives (ids), for tests and for people reading the demo."""
        ids = {name: [int(i) for i in self.ids[name][:12]] for name in self.objects}
        acts = ids["activities"]
        leads_cols = self._cols["leads"]
        burst_at = SEED_START + int(max(self.now - SEED_START, DAY) * 0.62)
        return {
            "unicode_lead_ids": ids["leads"][:2],
            "unicode_person_ids": ids["people"][:2],
            "lead_without_email_id": ids["leads"][2],
            "shared_email": {
                "lead_id": ids["leads"][3],
                "person_id": ids["people"][3],
                "email": self.lead_email(3),
            },
            "converted_lead": {"lead_id": ids["leads"][4], "person_id": ids["people"][4]},
            "converted_lead_not_listed": {
                "lead_id": MISSING_LEAD_ID,
                "person_id": ids["people"][9],
            },
            "lead_and_person_with_same_id": ids["leads"][0],
            "person_without_email_id": ids["people"][2],
            "person_null_company_id": ids["people"][5],
            "person_unknown_company": {
                "person_id": ids["people"][6],
                "company_id": UNKNOWN_COMPANY_BASE + 6,
            },
            "person_two_emails_id": ids["people"][7],
            "person_empty_multiselect_id": ids["people"][8],
            "customer_company_id": ids["companies"][0],
            "company_null_domain_id": ids["companies"][1],
            "company_invalid_owner": {
                "company_id": ids["companies"][2],
                "owner_id": self.metadata.invalid_planhat_owner_ids[0],
            },
            "company_without_owner_field_id": ids["companies"][3],
            "company_unicode_name_id": ids["companies"][4],
            "opportunity_blank_type_id": ids["opportunities"][1],
            "opportunity_without_type_field_id": ids["opportunities"][2],
            "same_type_opportunity_ids": [ids["opportunities"][0], ids["opportunities"][6]],
            "opportunity_close_date": {
                "id": ids["opportunities"][3],
                "close_date": format_close_date(JAN_14_2024, self.metadata.close_date_format),
            },
            "activities": {
                "note_on_person": acts[0],
                "phone_call_on_lead": acts[1],
                "meeting_on_company": acts[2],
                "note_on_opportunity": acts[3],
                "system_property_changed": acts[4],
                "system_email": acts[5],
                "system_entity_created_on_lead": acts[6],
                "system_stage_changed_on_opportunity": acts[7],
                "disabled_type": acts[8],
                "custom_type": acts[9],
                "meeting_on_lead": acts[10],
                "backdated": int(self.ids["activities"][-1]),
            },
            "oldest_lead_id": ids["leads"][0],
            "newest_lead_modified": int(leads_cols["date_modified"][-1]),
            "mass_update": {
                "date_modified": burst_at,
                "leads": int(np.count_nonzero(leads_cols["date_modified"] == burst_at)),
            },
        }


class _Absent:
    """Marks a custom field left out of a record's ``custom_fields`` entirely."""

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()


# -- the objects: one declaration each -------------------------------------------------------------
Record = dict[str, Any]


@dataclass(frozen=True)
class SeedObject:
    """How the sandbox seeds and searches one Copper object: everything it knows of it.

    The pipeline's declaration (``sync.copper.schema.CopperObject``) says how the object is
    fetched; this one says how the emulated API generates and serves it. Keyed by the same name.
    """

    name: str
    record_type: str
    """Singular, as in custom fields' ``available_on``: ``lead``."""
    base_count: int
    """Rows at scale 1."""
    min_count: int
    """Rows at any scale: enough for every edge case pinned to the first rows."""
    id_base: int
    """The first row's id; ids then rise with the row, with gaps."""
    record: Callable[[CopperSeed, int], Record]
    """Row -> record, from the seed's columns (``ids``, ``dates``) and its ``dice``."""
    search_keys: frozenset[str]
    """Documented body keys of its search: anything else is a 422, as in Copper."""
    default_sort: str = "date_modified"
    sorts: Mapping[str, Callable[[Record], Any]] = field(default_factory=dict)
    """Documented ``sort_by`` values besides the column sorts (``date_modified``, ...)."""
    mass_update: bool = True
    """Rows touched by one mass update in the same second: a tie group larger than a page."""
    search_columns: tuple[str, ...] = ()
    """Searchable columns besides id and dates (kept as arrays, filtered vectorised)."""
    columns: Callable[[CopperSeed], dict[str, np.ndarray]] | None = None
    """The generated rows' ``search_columns``, built once every object has its ids."""
    record_columns: Callable[[Record], dict[str, int]] | None = None
    """The ``search_columns`` of a record given explicitly (by a test or the control surface)."""
    text_key: Callable[[CopperSeed, str, np.ndarray], list[str] | None] | None = None
    """Sort keys of a text field for rows, without building records (name sorts)."""


def first_of(items: list[Any] | None, key: str) -> Any:
    return items[0].get(key) if items else None


def _address_part(part: str) -> Callable[[Record], Any]:
    return lambda r: (r.get("address") or {}).get(part)


def _email_of(record: Record) -> str | None:
    if "emails" in record:
        return first_of(record.get("emails"), "email")
    return (record.get("email") or {}).get("email")


def parse_close_date(text: Any, fmt: str = "M/D/YYYY") -> int | None:
    """``"M/D/YYYY"`` (or ``"D/M/YYYY"``) text -> Unix seconds at UTC midnight, else ``None``."""
    try:
        first, second, year = (int(part) for part in str(text).split("/"))
        month, day = (second, first) if fmt == "D/M/YYYY" else (first, second)
        return int(dt.datetime(year, month, day, tzinfo=dt.UTC).timestamp())
    except (TypeError, ValueError):
        return None


def close_date_of(fmt: str) -> Callable[[Record], Any]:
    return lambda r: parse_close_date(r.get("close_date"), fmt)


def field_of(name: str) -> Callable[[Record], Any]:
    return lambda r: r.get(name)


PAGING_KEYS = frozenset({"page_number", "page_size"})
SORT_KEYS = frozenset({"sort_by", "sort_direction"})
COMMON_SEARCH_KEYS = PAGING_KEYS | SORT_KEYS | {
    "ids", "name", "tags", "followed", "age", "assignee_ids", "custom_fields",
    "minimum_interaction_count", "maximum_interaction_count",
    "minimum_interaction_date", "maximum_interaction_date",
    "minimum_created_date", "maximum_created_date",
    "minimum_modified_date", "maximum_modified_date",
}  # fmt: skip
"""Body keys every record search documents (leads, people, companies, opportunities)."""
_ADDRESS_KEYS = {"phone_number", "city", "state", "postal_code", "country"}

_PERSONISH_SORTS: dict[str, Callable[[Record], Any]] = {
    "name": field_of("name"),
    "first_name": field_of("first_name"),
    "last_name": field_of("last_name"),
    "title": field_of("title"),
    "email": _email_of,
    "phone": lambda r: first_of(r.get("phone_numbers"), "number"),
    "city": _address_part("city"),
    "state": _address_part("state"),
    "country": _address_part("country"),
    "zip": _address_part("postal_code"),
}


def _lead_record_columns(record: Record) -> dict[str, int]:
    return {"converted": int(record.get("converted_contact_id") is not None)}


def _activity_record_columns(record: Record) -> dict[str, int]:
    parent, kind = record.get("parent") or {}, record.get("type") or {}
    return {
        "activity_date": int(record.get("activity_date") or record["date_created"]),
        "parent_type": code_of(PARENT_TYPES, parent.get("type")),
        "parent_id": int(parent.get("id") or 0),
        "type_category": code_of(CATEGORIES, kind.get("category")),
        "type_id": int(kind.get("id") or 0),
    }


def code_of(values: tuple[str, ...], value: Any) -> int:
    """The index of ``value`` in a code list (``PARENT_TYPES``, ...), -1 when absent."""
    return values.index(value) if value in values else -1


DEFAULT_SEED_OBJECTS: tuple[SeedObject, ...] = (
    SeedObject(
        "leads", "lead", 1000, 10, 70_100_000, CopperSeed.lead,
        frozenset(COMMON_SEARCH_KEYS | _ADDRESS_KEYS | {
            "emails", "status_ids", "customer_source_ids", "include_converted_leads",
            "minimum_monetary_value", "maximum_monetary_value",
        }),
        default_sort="name",
        sorts=_PERSONISH_SORTS | {
            "company_name": field_of("company_name"),
            "value": field_of("monetary_value"),
            "inactive_days": field_of("date_last_contacted"),
        },
        search_columns=("converted",),
        columns=CopperSeed._lead_columns,
        record_columns=_lead_record_columns,
        text_key=lambda seed, fld, rows: seed._lead_names.text_key(fld, rows),
    ),
    # The same id base as leads: lead and person ids overlap, like Copper's.
    SeedObject(
        "people", "person", 1000, 12, 70_100_000, CopperSeed.person,
        frozenset(COMMON_SEARCH_KEYS | _ADDRESS_KEYS | {
            "emails", "contact_type_ids", "company_ids", "opportunity_ids",
        }),
        default_sort="first_name",
        sorts=_PERSONISH_SORTS,
        text_key=lambda seed, fld, rows: seed._person_names.text_key(fld, rows),
    ),
    SeedObject(
        "companies", "company", 100, 5, 60_400_000, CopperSeed.company,
        frozenset(COMMON_SEARCH_KEYS | _ADDRESS_KEYS | {"email_domains", "contact_type_ids"}),
        sorts={
            **{k: _PERSONISH_SORTS[k] for k in ("name", "phone", "city", "state", "country", "zip")},
            "email_domain": field_of("email_domain"),
            "assignee": field_of("assignee_id"),
            "contact": field_of("primary_contact_id"),
            "contact_group": field_of("contact_type_id"),
            "interaction_count": field_of("interaction_count"),
            "primary_website": lambda r: first_of(r.get("websites"), "url"),
        },
    ),
    SeedObject(
        "opportunities", "opportunity", 300, 8, 30_200_000, CopperSeed.opportunity,
        frozenset(COMMON_SEARCH_KEYS | {
            "status_ids", "pipeline_ids", "pipeline_stage_ids", "priority_ids", "priorities",
            "customer_source_ids", "loss_reason_ids", "company_ids", "primary_contact_ids",
            "minimum_monetary_value", "maximum_monetary_value",
            "minimum_close_date", "maximum_close_date",
            "minimum_stage_change_date", "maximum_stage_change_date",
        }),
        default_sort="name",
        sorts={
            "name": field_of("name"),
            "company_name": field_of("company_name"),
            "value": field_of("monetary_value"),
            "assignee": field_of("assignee_id"),
            "customer_source_id": field_of("customer_source_id"),
            "contact": field_of("primary_contact_id"),
            "stage": field_of("pipeline_stage_id"),
            "status": field_of("status"),
            "close_date": close_date_of("M/D/YYYY"),  # D/M/YYYY accounts: see the sandbox
            "priority": field_of("priority"),
            "interaction_count": field_of("interaction_count"),
            "win_probability": field_of("win_probability"),
        },
    ),
    # Activities have their own, smaller set. Sorting is not documented: Hull sent sort_by
    # anyway and it is accepted, but ignored (results come by activity_date, then id).
    SeedObject(
        "activities", "activity", 2000, 12, 6_300_000_000, CopperSeed.activity,
        frozenset(PAGING_KEYS | SORT_KEYS | {
            "parent", "activity_types", "minimum_activity_date", "maximum_activity_date",
            "full_result",
        }),
        default_sort="activity_date",
        mass_update=False,
        search_columns=("activity_date", "parent_type", "parent_id", "type_category", "type_id"),
        columns=CopperSeed._activity_columns,
        record_columns=_activity_record_columns,
    ),
)  # fmt: skip
"""How the sandbox seeds the pipeline's objects (``sync.copper.schema.DEFAULT_OBJECTS``)."""


def seed_objects(extra: Iterable[SeedObject] = ()) -> dict[str, SeedObject]:
    """Name -> seed declaration: the default objects plus ``extra`` (each name once)."""
    registry = {o.name: o for o in DEFAULT_SEED_OBJECTS}
    for spec in extra:
        if spec.name in registry:
            raise ValueError(f"sandbox Copper object {spec.name!r} is declared twice")
        registry[spec.name] = spec
    return registry


SEED_OBJECTS: dict[str, SeedObject] = seed_objects()
