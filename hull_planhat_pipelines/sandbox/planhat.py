"""The emulated Planhat API: REST and analytics, two real HTTP servers on 127.0.0.1.

It keeps the real API's rules, because a sandbox kinder than Planhat hides bugs:

- REST auth is ``Authorization: Bearer <token>`` or Basic with the token as user name and an
  empty password; anything else is 401 ``{"error": ...}``.
- Lists are bare arrays paged by ``limit``/``offset`` with ``sort`` (``-`` descending, ties by
  ``_id``) and ``select`` (``_id`` always kept). A ``limit`` above the page cap (companies 5,000,
  endusers 2,000, users 10,000) is silently capped, so a naive client takes a full page for the
  last one. Without ``limit`` a page holds 100 rows; ``limit=0`` means "as many as allowed".
  Archived endusers are not listed. Default order is creation order.
- The company listing is not the company: ``owner``/``coOwner`` come as ``{_id, nickName}``
  objects (plain ids from ``GET /companies/{id}``), and ``custom``, ``externalId`` and ``phase``
  are left out unless ``select`` names them. A field missing from a listing is not listed,
  never emptied.
- ``{id}`` is an ``_id``, ``extid-<externalId>`` or ``srcid-<sourceId>`` (DELETE: ``_id`` only);
  unknown is 404. ``PUT``/``PATCH /{model}/{id}`` is a partial update (``custom`` merged) that
  returns the whole record.
- Bulk ``PUT /companies|/endusers`` takes at most 5,000 items (more: 400, nothing applied) and
  answers 200 (all applied), 206 (some items refused) or 400 (every item refused, or a bad
  payload) with Planhat's counters and key lists. An enduser tied to no company is silently
  ignored: it appears nowhere in the answer, exactly as Planhat documents.
- Every write bumps ``updatedAt`` (companies also ``lastUpdated``), even one changing nothing.
- Other models (conversations, licenses, assets, issues, tasks, projects, invoices, nps, churn,
  opportunities, sales; declared in ``planhat_store.GENERIC_MODELS``) get the full route set:
  list (cap 2,000), get, ``POST`` one, bulk ``PUT``, ``PUT``/``PATCH``/``DELETE`` one, with the
  same keyables, statuses and bulk answer as companies. There is no ``/notes``: notes are
  conversations with ``type: "note"``.
- Analytics: activities need no auth, only the tenant token in the path, and always get 200 with
  an empty body; activities matching no enduser or company are dropped. An unknown tenant token
  is 401 (Planhat documents nothing; a loud error beats a silent sink). Dimension data requires
  the Bearer token (documented as "verify": enforced, stricter is safer) and answers
  ``{"processed", "errors"}``. Bodies above 32 MB are 413.
- Where Planhat documents nothing: creates answer 200 with the record, deletes 200
  ``{"n": 1, "ok": 1, "deletedCount": 1}``, a non-numeric ``limit``/``offset`` is 400, a single
  ``POST /endusers`` without a known company is 400 (the bulk endpoint ignores it silently).
- Seed: ``scale`` 1.0 is about 100 companies, 1,000 endusers (a few archived, a few emails on
  two companies) and 10 team members; ``seed_user_ids`` become the first team members' ids.

The write rules themselves (keyables, uniqueness, per-item errors) live in ``planhat_store``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from hull_planhat_pipelines.sandbox.planhat_store import (
    BULK_MAX_ITEMS,
    GENERIC_MODELS,
    BadRequest,
    NotFound,
    PlanhatStore,
    Record,
    copy_record,
    iso,
    model_name,
    slugify,
)
from hull_planhat_pipelines.sandbox.server import (
    Handler,
    Request,
    Response,
    SandboxServer,
    error,
)

ANALYTICS_MAX_BYTES = 32 * 1024 * 1024
WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
_LIST_FILTERS: dict[str, tuple[str, ...]] = {
    "companies": (),
    "endusers": ("companyId", "email"),
    "users": ("email",),
    **{
        name: ("companyId",) if spec.company_field == "companyId" else ()
        for name, spec in GENERIC_MODELS.items()
    },
}
_LEAN_FILTERS = ("externalId", "sourceId", "status")


class CountingServer(SandboxServer):
    """A SandboxServer that counts write requests as they arrive (before any answer is sent)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_requests = 0
        self._count_lock = threading.Lock()

    def dispatch(self, request: Request) -> Response:
        if request.method in WRITE_METHODS and not request.path.startswith("/_sandbox/"):
            with self._count_lock:
                self.write_requests += 1
        return super().dispatch(request)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _int_param(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a non-negative integer") from None
    if value < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
    return value


def _select(query: dict[str, str]) -> list[str] | None:
    fields = [f.strip() for f in (query.get("select") or "").split(",") if f.strip()]
    return fields or None


def _guard(handler: Handler) -> Handler:
    """Map the store's refusals to Planhat's statuses."""

    def guarded(request: Request) -> Response:
        try:
            return handler(request)
        except NotFound as exc:
            return error(404, str(exc))
        except BadRequest as exc:
            return error(400, str(exc))

    return guarded


class PlanhatSandbox:
    """A seeded Planhat tenant served over HTTP: REST on ``rest_url``, analytics on
    ``analytics_url``; state readable and adjustable from Python for tests."""

    def __init__(
        self,
        *,
        seed: int = 0,
        scale: float = 1.0,
        api_token: str = "sandbox-planhat-token",
        tenant_token: str = "sandbox-tenant-token",
        rate_limit_per_minute: int | None = None,
        rate_limit_retry_after: bool = False,
        seed_user_ids: list[str] | None = None,
        clock: Callable[[], datetime] | None = None,
        port: int = 0,
        analytics_port: int = 0,
        bulk_keys: str = "id",
        metrics_accept_limit: int | None = None,
    ) -> None:
        if bulk_keys not in ("id", "full"):
            raise ValueError("bulk_keys must be 'id' (Planhat's documented answer) or 'full'")
        self.bulk_keys = bulk_keys
        """``id``: ``insertsKeys``/``updatesKeys`` entries hold only ``_id``, as documented;
        ``full``: they also name ``externalId``/``sourceId`` (kinder: only when asked)."""
        self.metrics_accept_limit = metrics_accept_limit
        """Keep at most this many valid metric items per request, the rest dropped silently."""
        self.api_token = api_token
        self.tenant_token = tenant_token
        self._clock = clock or _utc_now
        self.store = PlanhatStore(seed=seed, clock=self._clock)
        seed_tenant(self.store, seed=seed, scale=scale, user_ids=seed_user_ids or [])
        rate_clock = (lambda: self._clock().timestamp()) if clock else time.monotonic
        self.rest = CountingServer(
            "planhat",
            self._rest_routes(),
            auth=self._check_token,
            rate_limit_per_minute=rate_limit_per_minute,
            rate_limit_retry_after=rate_limit_retry_after,
            clock=rate_clock,
            port=port,
        )
        self.analytics = CountingServer(
            "planhat-analytics", self._analytics_routes(), port=analytics_port
        )

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def rest_url(self) -> str:
        return self.rest.base_url

    @property
    def analytics_url(self) -> str:
        return self.analytics.base_url

    def start(self) -> PlanhatSandbox:
        self.rest.start()
        self.analytics.start()
        return self

    def stop(self) -> None:
        """Stop both servers at once (each shutdown waits out its server's poll interval)."""
        threads = [threading.Thread(target=server.stop) for server in (self.rest, self.analytics)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def __enter__(self) -> PlanhatSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The environment that points the pipeline at this sandbox."""
        return {
            "PLANHAT_API_URL": self.rest_url,
            "PLANHAT_ANALYTICS_URL": self.analytics_url,
            "PLANHAT_API_TOKEN": self.api_token,
            "PLANHAT_TENANT_TOKEN": self.tenant_token,
        }

    # -- state for assertions and setup -------------------------------------------------------
    def companies(self) -> list[Record]:
        return [copy_record(r) for r in self.store.all("companies")]

    def endusers(self, include_archived: bool = False) -> list[Record]:
        return [copy_record(r) for r in self.store.all("endusers", include_archived)]

    def users(self) -> list[Record]:
        return [copy_record(r) for r in self.store.all("users")]

    def add_companies(self, records: list[Record]) -> list[Record]:
        """Store companies as given (no API rules), filling ``_id``, ``slug`` and timestamps."""
        return [copy_record(r) for r in self.store.seed_records("companies", records)]

    def add_endusers(self, records: list[Record]) -> list[Record]:
        """Store endusers as given; each names its company by ``companyId`` or ``companyExternalId``."""
        return [copy_record(r) for r in self.store.seed_records("endusers", records)]

    def add_users(self, records: list[Record]) -> list[Record]:
        return [copy_record(r) for r in self.store.seed_records("users", records)]

    def records(self, model: str) -> list[Record]:
        """Every stored record of any model (``conversations``, ``licenses``, ...), in order."""
        return [copy_record(r) for r in self.store.all(model_name(model))]

    def add_records(self, model: str, records: list[Record]) -> list[Record]:
        """Store records of any model as given (no API rules), filling ``_id`` and timestamps;
        a ``companyExternalId`` is resolved into the model's company field."""
        return [copy_record(r) for r in self.store.seed_records(model, records)]

    def set_list_limit(self, model: str, limit: int) -> None:
        """Change a list endpoint's page cap (small caps make paging tests cheap)."""
        self.store.list_caps[model_name(model)] = limit

    def fail_items(
        self,
        model: str,
        predicate: Callable[[Record], bool],
        message: str,
        times: int | None = None,
    ) -> None:
        """Make bulk items matching ``predicate`` fail with ``message`` (``times`` None: always).

        For the generic models (conversations, licenses, ...) single writes (``POST``, ``PUT``/
        ``PATCH`` one) matching it are refused too, with a 400."""
        self.store.inject(model, predicate, message, times)

    def deny_items(self, model: str, predicate: Callable[[Record], bool], message: str) -> None:
        """Refuse bulk items matching ``predicate`` as ``permissionErrors`` (403 when nothing
        else of the request applies, else 206)."""
        self.store.deny(model, predicate, message)

    @property
    def activities(self) -> list[Record]:
        """Every accepted user activity (single and bulk), with the enduser it landed on."""
        return self.store.activities

    @property
    def dimension_data(self) -> list[Record]:
        """Every accepted metric item."""
        return self.store.dimension_data

    def write_count(self) -> int:
        """Write requests (PUT/POST/PATCH/DELETE) received by both servers, refused ones included."""
        return self.rest.write_requests + self.analytics.write_requests

    def reset_write_count(self) -> None:
        self.rest.write_requests = self.analytics.write_requests = 0

    # -- REST ---------------------------------------------------------------------------------
    def _check_token(self, request: Request) -> Response | None:
        scheme, _, credential = (request.header("authorization") or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer" and hmac.compare_digest(credential, self.api_token):
            return None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            if hmac.compare_digest(decoded, f"{self.api_token}:"):
                return None
        return error(401, "Unauthorized: missing or invalid API access token")

    def _rest_routes(self) -> list[tuple[str, str, Handler]]:
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/leancompanies", self._lean),
        ]
        for model in ("companies", "endusers", "users", *GENERIC_MODELS):
            one = f"/{model}/(?P<id>[^/]+)"
            routes += [
                ("GET", f"/{model}", self._list(model)),
                ("POST", f"/{model}", self._create(model)),
                ("GET", one, self._get(model)),
                ("PUT", one, self._update(model)),
            ]
            if model != "users":
                routes += [
                    ("PUT", f"/{model}", self._bulk(model)),
                    ("PATCH", one, self._update(model)),
                    ("DELETE", one, self._delete(model)),
                ]
        return [(method, path, _guard(handler)) for method, path, handler in routes]

    def _list(self, model: str) -> Handler:
        filters = _LIST_FILTERS[model]

        def handle(request: Request) -> Response:
            rows = self.store.listing(
                model,
                limit=_int_param(request.query, "limit"),
                offset=_int_param(request.query, "offset") or 0,
                sort=request.query.get("sort") or None,
                select=_select(request.query),
                filters={f: request.query[f] for f in filters if request.query.get(f)},
            )
            return Response(200, rows)

        return handle

    def _lean(self, request: Request) -> Response:
        filters = {f: request.query[f] for f in _LEAN_FILTERS if request.query.get(f)}
        return Response(200, self.store.lean_companies(filters))

    def _get(self, model: str) -> Handler:
        def handle(request: Request) -> Response:
            return Response(200, self.store.get(model, unquote(request.params["id"])))

        return handle

    def _create(self, model: str) -> Handler:
        def handle(request: Request) -> Response:
            return Response(200, self.store.create_one(model, request.body))

        return handle

    def _update(self, model: str) -> Handler:
        def handle(request: Request) -> Response:
            ref = unquote(request.params["id"])
            return Response(200, self.store.update_one(model, ref, request.body))

        return handle

    def _delete(self, model: str) -> Handler:
        def handle(request: Request) -> Response:
            return Response(200, self.store.delete(model, unquote(request.params["id"])))

        return handle

    def _bulk(self, model: str) -> Handler:
        def handle(request: Request) -> Response:
            items = request.body
            if not isinstance(items, list):
                return error(400, "body must be a JSON array of records")
            if len(items) > BULK_MAX_ITEMS:
                return error(400, f"at most {BULK_MAX_ITEMS} items per request, got {len(items)}")
            result = self.store.bulk_upsert(model, items, full_keys=self.bulk_keys == "full")
            return Response(result.status, result.body())

        return handle

    # -- analytics ----------------------------------------------------------------------------
    def _analytics_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/analytics/bulk/(?P<tenant>[^/]+)", self._activities),
            ("POST", "/analytics/(?P<tenant>[^/]+)", self._activity),
            ("POST", "/dimensiondata/(?P<tenant>[^/]+)", self._dimension_data),
        ]

    def _refuse_analytics(self, request: Request) -> Response | None:
        if len(request.raw_body) > ANALYTICS_MAX_BYTES:
            return error(413, "request entity too large: at most 32 MB per request")
        if not hmac.compare_digest(unquote(request.params["tenant"]), self.tenant_token):
            return error(401, "unknown tenant token")
        return None

    def _activity(self, request: Request) -> Response:
        refused = self._refuse_analytics(request)
        if refused is not None:
            return refused
        self.store.record_activity(request.body)
        return Response(200)

    def _activities(self, request: Request) -> Response:
        refused = self._refuse_analytics(request)
        if refused is not None:
            return refused
        if isinstance(request.body, list):
            for item in request.body:
                self.store.record_activity(item)
        return Response(200)

    def _dimension_data(self, request: Request) -> Response:
        refused = self._refuse_analytics(request) or self._check_token(request)
        if refused is not None:
            return refused
        body = request.body
        if not isinstance(body, dict | list):
            return error(400, "body must be a metric object or an array of them")
        items = body if isinstance(body, list) else [body]
        return Response(200, self.store.record_metrics(items, self.metrics_accept_limit))


# -- seed -------------------------------------------------------------------------------------
_FIRST = (
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances",
    "Edsger", "Hedy", "Claude", "Radia", "John", "Karen", "Tim", "Sophie", "Guido",
    "Anita", "Niklaus", "Joan", "Donald", "Katherine", "Bjarne", "Leslie", "Vint", "Shafi",
    "Yukihiro",
)  # fmt: skip
_LAST = (
    "Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie",
    "Allen", "Dijkstra", "Lamarr", "Shannon", "Perlman", "McCarthy", "Jones", "Lee",
    "Wilson", "Rossum", "Borg", "Wirth", "Clarke", "Knuth", "Johnson", "Stroustrup",
    "Lamport", "Cerf", "Goldwasser", "Matsumoto",
)  # fmt: skip
_ADJ = (
    "Blue", "Bright", "Swift", "Quiet", "Bold", "Silver", "Northern", "Urban", "Clever",
    "Green", "Solid", "Prime",
)  # fmt: skip
_NOUN = (
    "Harbor", "Falcon", "Maple", "Summit", "Orbit", "Beacon", "Canyon", "Forge", "Meadow",
    "Pixel", "Atlas", "Cedar",
)  # fmt: skip
_SUFFIX = (
    "Labs", "Systems", "Group", "Analytics", "Works", "Partners", "Logistics", "Health",
)  # fmt: skip
_PHASES = ("Onboarding", "Adoption", "Renewal", "Expansion", None)
_STATUSES = ("prospect", "coming", "customer", "customer", "customer", "canceled", "lost")
_POSITIONS = ("CEO", "CTO", "Head of Sales", "Engineer", "Analyst", "Buyer", None)
_BASE = datetime(2024, 1, 1, tzinfo=UTC)


def _timestamps(rng: random.Random, index: int) -> Record:
    """Increasing creation times (creation order = ``_id`` order), later updates."""
    created = _BASE + timedelta(seconds=index * 60 + rng.randrange(60))
    updated = created + timedelta(days=rng.randrange(300), seconds=rng.randrange(86400))
    return {"createdAt": iso(created), "updatedAt": iso(updated)}


def _unique(candidate: str, taken: set[str]) -> str:
    value, n = candidate, 1
    while value in taken:
        n += 1
        value = candidate.replace("@", f"{n}@", 1) if "@" in candidate else f"{candidate} {n}"
    taken.add(value)
    return value


def seed_tenant(store: PlanhatStore, *, seed: int, scale: float, user_ids: list[str]) -> None:
    """~100 companies, 1,000 endusers and 10 team members per unit of ``scale``, from ``seed``."""
    rng = random.Random(f"planhat-seed:{seed}")
    n_users = max(len(user_ids), 3, round(10 * scale))
    users = store.seed_records("users", _seed_users(rng, n_users, user_ids))
    user_ids = [u["_id"] for u in users]
    companies = store.seed_records(
        "companies", _seed_companies(rng, max(1, round(100 * scale)), user_ids, seed)
    )
    store.seed_records("endusers", _seed_endusers(rng, round(1000 * scale), companies))


def _seed_users(rng: random.Random, count: int, ids: list[str]) -> Iterable[Record]:
    emails: set[str] = set()
    for i in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        user: Record = {
            "email": _unique(f"{first}.{last}@team.example.com".lower(), emails),
            "nickName": first,
            "firstName": first,
            "lastName": last,
            "roles": ["000000000000000000000000"] if i == 0 else [],
            "externalId": f"TM-{i + 1:03d}",
            "inactive": i % 7 == 6,
            "isHidden": False,
            "removed": False,
            **_timestamps(rng, i),
        }
        if i < len(ids):
            user["_id"] = ids[i]
        yield user


def _seed_companies(
    rng: random.Random, count: int, user_ids: list[str], seed: int
) -> Iterable[Record]:
    """Most companies carry an ``externalId`` in the Copper sandbox's "Account ID" form, so the
    first accounts of a Copper sandbox with the same seed already exist in Planhat."""
    names: set[str] = set()
    for i in range(count):
        name = _unique(f"{rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_SUFFIX)}", names)
        mrr = rng.randrange(0, 20000, 50)
        company: Record = {
            "name": name,
            "domains": [f"{slugify(name)}.example.com"],
            "owner": rng.choice(user_ids) if rng.random() < 0.85 else None,
            "coOwner": rng.choice(user_ids) if rng.random() < 0.25 else None,
            "phase": rng.choice(_PHASES),
            "status": rng.choice(_STATUSES),
            "mrr": mrr,
            "arr": mrr * 12,
            "h": rng.randrange(1, 11),
            "tags": rng.sample(["enterprise", "smb", "trial", "priority"], rng.randrange(3)),
            "custom": {
                "Company Size": rng.randrange(5, 5000),
                "Region": rng.choice(("EU", "US", "APAC")),
            },
            **_timestamps(rng, i),
        }
        if rng.random() < 0.7:
            company["externalId"] = f"ACC-{seed}-{i:06d}"
        if rng.random() < 0.4:
            company["sourceId"] = f"SRC-{i + 1:05d}"
        yield company


def _seed_endusers(rng: random.Random, count: int, companies: list[Record]) -> Iterable[Record]:
    emails: set[str] = set()
    seen: list[str] = []
    with_primary: set[str] = set()
    for i in range(count):
        company = rng.choice(companies)
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        domain = company["domains"][0]
        if seen and i % 40 == 39:  # the same person on two companies: emails are not unique
            email = rng.choice(seen)
        else:
            email = _unique(f"{first}.{last}@{domain}".lower(), emails)
            seen.append(email)
        enduser: Record = {
            "email": email,
            "firstName": first,
            "lastName": last,
            "name": f"{first} {last}",
            "position": rng.choice(_POSITIONS),
            "phone": f"+1-555-{rng.randrange(10000):04d}",
            "companyId": company["_id"],
            "primary": company["_id"] not in with_primary,
            "archived": rng.random() < 0.04,
            "tags": [],
            "custom": {"Plan": rng.choice(["Free", "Pro", "Enterprise"])},
            **_timestamps(rng, i),
        }
        with_primary.add(company["_id"])
        if rng.random() < 0.6:
            enduser["externalId"] = f"USR-{i + 1:06d}"
        if rng.random() < 0.3:
            enduser["sourceId"] = f"SRC-P-{i + 1:06d}"
        yield enduser
