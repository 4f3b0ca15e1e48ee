"""Retry and freshness policies of the source assets: how hard a fetch tries, how old is late."""

import datetime as dt

import dagster as dg

from hull_planhat_pipelines.clients.http import ApiAuthError, ApiError
from hull_planhat_pipelines.settings import Settings

FETCH_RETRY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
"""A fetch that failed past its client's own retries (an outage, a 429 still refused) is tried
again after 30 s ± 30 s, then about 1 min and 2 min. Refused credentials, other refusals
(``retry_can_help``) and a launch without a partition are raised with
``allow_retries=False``: retrying cannot fix them."""

TRANSIENT_REFUSALS = frozenset({408, 425, 429})
"""4xx answers that say "not now" rather than "not this": a later try may succeed."""


def retry_can_help(exc: ApiError) -> bool:
    """Whether trying the step again minutes later may succeed where the client's own retries
    did not: an outage (5xx), no answer at all, a malformed body (often a proxy's). Any other
    4xx refuses the request itself (a bad search, a path the API does not have, refused
    credentials): every try gets the same answer, so the run fails at once instead of after
    three more."""
    if isinstance(exc, ApiAuthError):
        return False
    status = exc.status
    return status is None or status < 400 or status >= 500 or status in TRANSIENT_REFUSALS


def copper_freshness(settings: Settings) -> dg.FreshnessPolicy:
    """Copper runs only when something changed, so a quiet day is no sign of trouble; the
    weekly "fetch all" must land, though: late after 8 days, a warning after 2."""
    del settings  # the windows follow the weekly fetch-all, not the poll
    return dg.FreshnessPolicy.time_window(
        fail_window=dt.timedelta(days=8), warn_window=dt.timedelta(days=2)
    )


def planhat_freshness(settings: Settings) -> dg.FreshnessPolicy:
    """A Planhat snapshot is taken every ``planhat.fetch_interval_minutes``: warn after two
    missed intervals, fail after three."""
    minutes = settings.planhat.fetch_interval_minutes
    return dg.FreshnessPolicy.time_window(
        fail_window=dt.timedelta(minutes=3 * minutes), warn_window=dt.timedelta(minutes=2 * minutes)
    )


CHANGED_RECORDS = "changed_records"
"""Metadata of a source materialization: the records its run inserted, replaced or removed
(fetch times aside)."""
UNCHANGED = "source_unchanged"
"""Metadata of a source materialization: true when its run found the source exactly as it was
stored (and something was stored before). Such a materialization asks nothing of the assets
downstream: the downstream sensor and the command line's sync start no run for it, so a poll or
a Planhat fetch that finds nothing new costs its requests only."""


def change_metadata(changed: int, *, first: bool) -> dict[str, dg.MetadataValue]:
    """``changed_records`` and ``source_unchanged`` for a source run."""
    return {
        CHANGED_RECORDS: dg.MetadataValue.int(changed),
        UNCHANGED: dg.MetadataValue.bool(changed == 0 and not first),
    }
