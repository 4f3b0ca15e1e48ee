"""A minimal Copper search endpoint on the shared sandbox server, for client edge cases.

It follows the documented search rules (inclusive date filters, ``date_modified`` sort, paging
in the body, only documented keys, ``X-PW-TOTAL``) with a result cap small enough to reach in a
test. Activities come in a scrambled order, as nothing documents theirs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from hull_planhat_pipelines.sandbox.copper import total_estimate
from hull_planhat_pipelines.sandbox.server import Request, Response, SandboxServer, error
from hull_planhat_pipelines.sync.copper.schema import COPPER_OBJECTS
from hull_planhat_pipelines_tests.fake_time import FakeTime  # noqa: F401  (re-exported)

PAGING = {"page_size", "page_number"}
SORTED_KEYS = PAGING | {
    "sort_by",
    "sort_direction",
    "minimum_modified_date",
    "maximum_modified_date",
    "minimum_created_date",
    "maximum_created_date",
}
LEAD_KEYS = SORTED_KEYS | {"include_converted_leads"}
ACTIVITY_KEYS = PAGING | {"minimum_activity_date", "maximum_activity_date", "activity_types"}


def _scramble(record: dict[str, Any]) -> str:
    return hashlib.sha1(str(record["id"]).encode()).hexdigest()


class StubCopper:
    """``POST /<object>/search`` over fixed records; ``total`` shapes the X-PW-TOTAL header:
    "count" (the matches), "estimate" (the matches rounded up as the sandbox's), "none"
    (absent), "blind" (every record, ignoring the filter) or "up_to_end" (every record up to
    the window's end, ignoring its start). Activities come in an order
    unrelated to their date, or by date (``activities_by_date``, as the sandbox returns them)."""

    def __init__(
        self,
        records: dict[str, list[dict[str, Any]]],
        *,
        cap: int,
        total: str = "count",
        rate_limit_per_minute: int | None = None,
        clock: Callable[[], float] | None = None,
        converted_flag: bool = True,
        activities_by_date: bool = False,
    ) -> None:
        self.records = records
        self.converted_flag = converted_flag
        """False: an account that refuses ``include_converted_leads`` as an unknown key."""
        self.cap = cap
        self.total = total
        self.activities_by_date = activities_by_date
        routes = [("POST", f"/{name}/search", self._search) for name in COPPER_OBJECTS]
        kwargs: dict[str, Any] = {"rate_limit_per_minute": rate_limit_per_minute}
        if clock is not None:
            kwargs["clock"] = clock
        self.server = SandboxServer("copper-stub", routes, **kwargs).start()

    def close(self) -> None:
        self.server.stop()

    def _search(self, request: Request) -> Response:
        name = request.path.split("/")[1]
        obj = COPPER_OBJECTS[name]
        body = request.body or {}
        lead_keys = LEAD_KEYS if self.converted_flag else SORTED_KEYS
        allowed = (lead_keys if name == "leads" else SORTED_KEYS) if obj.sort_by else ACTIVITY_KEYS
        unknown = sorted(set(body) - allowed)
        if unknown:
            return error(422, f"Unrecognized attributes specified: {', '.join(unknown)}")
        low = body.get(obj.min_key, float("-inf"))
        high = body.get(obj.max_key, float("inf"))
        rows = self.records.get(name, [])
        matches = [r for r in rows if low <= r[obj.date_field] <= high]
        if obj.sort_by:
            created_low = body.get("minimum_created_date", float("-inf"))
            created_high = body.get("maximum_created_date", float("inf"))
            if "minimum_created_date" in body or "maximum_created_date" in body:
                matches = [
                    r for r in matches if created_low <= r.get("date_created", 0) <= created_high
                ]
            # ties in an order unrelated to the id: the client must dedupe by id, not position
            descending = body.get("sort_direction") == "desc"
            field = "date_created" if body.get("sort_by") == "date_created" else obj.date_field
            matches.sort(key=lambda r: (r.get(field, 0), _scramble(r)), reverse=descending)
        elif self.activities_by_date:
            matches.sort(key=lambda r: (r[obj.date_field], _scramble(r)))
        else:
            matches.sort(key=_scramble)
        size, number = body.get("page_size", 20), body.get("page_number", 1)
        page = matches[: self.cap][(number - 1) * size : number * size]
        headers = {}
        if self.total == "count":
            headers["X-PW-TOTAL"] = str(len(matches))
        elif self.total == "estimate":
            headers["X-PW-TOTAL"] = str(total_estimate(len(matches)))
        elif self.total == "up_to_end":
            headers["X-PW-TOTAL"] = str(sum(1 for r in rows if r[obj.date_field] <= high))
        elif self.total == "blind":
            headers["X-PW-TOTAL"] = str(len(rows))
        elif self.total == "under":  # an estimate that undercounts
            headers["X-PW-TOTAL"] = str(max(0, len(matches) // 2))
        return Response(200, page, headers)

    def bodies(self, name: str) -> list[dict[str, Any]]:
        return [r.body for r in self.server.recorded("POST", f"/{name}/search")]
