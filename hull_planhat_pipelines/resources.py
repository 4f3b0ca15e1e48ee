"""Dagster resources that build the API clients from environment settings.

Credentials reach the resources as ``dg.EnvVar`` so neither the UI nor a run's configuration
ever shows them; base URLs are plain configuration with the public APIs as defaults. Every
client of one account in this process draws from one rate limiter (``PROCESS_LIMITERS``): a
quota is per account, so the assets and sensors of a run share its window.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

import dagster as dg
import duckdb

from hull_planhat_pipelines.clients.copper import SHARED_METADATA, CopperClient
from hull_planhat_pipelines.clients.http import PROCESS_LIMITERS
from hull_planhat_pipelines.clients.hull import HullFirehoseClient, check_connector_id
from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.collector import collector_spared
from hull_planhat_pipelines.settings import ConfigError
from hull_planhat_pipelines.warehouse import read_only

DEFAULT_COPPER_API_URL = "https://api.copper.com/developer_api/v1"
DEFAULT_PLANHAT_API_URL = "https://api.planhat.com"
DEFAULT_PLANHAT_ANALYTICS_URL = "https://analytics.planhat.com"


class CopperResource(dg.ConfigurableResource):
    """Copper developer API credentials and client settings."""

    api_url: str = DEFAULT_COPPER_API_URL
    api_key: str
    user_email: str
    requests_per_minute: int = 180
    progress_bar: bool = False
    """Draw a progress bar on the terminal while fetching (the command line turns it on)."""

    def client(self) -> CopperClient:
        """A client on the process's shared metadata cache and the account's shared limiter."""
        limiter = PROCESS_LIMITERS.get(
            ("copper", self.api_url, self.user_email), self.requests_per_minute
        )
        return CopperClient(
            self.api_url,
            self.api_key,
            self.user_email,
            requests_per_minute=self.requests_per_minute,
            metadata_cache=SHARED_METADATA,
            limiter=limiter,
        )


class PlanhatResource(dg.ConfigurableResource):
    """Planhat REST and analytics credentials (the base URL carries the tenant's region)."""

    api_url: str = DEFAULT_PLANHAT_API_URL
    analytics_url: str = DEFAULT_PLANHAT_ANALYTICS_URL
    api_token: str
    tenant_token: str
    requests_per_minute: int = 200

    def client(self) -> PlanhatClient:
        """A client on the tenant's shared REST limiter (Planhat's 200-a-minute soft quota)."""
        limiter = PROCESS_LIMITERS.get(
            ("planhat", self.api_url, self.api_token), self.requests_per_minute
        )
        return PlanhatClient(
            self.api_url,
            self.analytics_url,
            self.api_token,
            self.tenant_token,
            requests_per_minute=self.requests_per_minute,
            limiter=limiter,
        )


def copper_resource(requests_per_minute: int, progress_bar: bool = False) -> CopperResource:
    return CopperResource(
        api_url=os.environ.get("COPPER_API_URL") or DEFAULT_COPPER_API_URL,
        api_key=dg.EnvVar("COPPER_API_KEY"),
        user_email=dg.EnvVar("COPPER_USER_EMAIL"),
        requests_per_minute=requests_per_minute,
        progress_bar=progress_bar,
    )


def planhat_resource(requests_per_minute: int) -> PlanhatResource:
    return PlanhatResource(
        api_url=os.environ.get("PLANHAT_API_URL") or DEFAULT_PLANHAT_API_URL,
        analytics_url=os.environ.get("PLANHAT_ANALYTICS_URL") or DEFAULT_PLANHAT_ANALYTICS_URL,
        api_token=dg.EnvVar("PLANHAT_API_TOKEN"),
        tenant_token=dg.EnvVar("PLANHAT_TENANT_TOKEN"),
        requests_per_minute=requests_per_minute,
    )


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file, for steps that read it (checks) or write it through the warehouse layer.

    Every step of the project uses it, so it also holds the collector's full passes spaced for
    the run (``collector``): a run Dagster launches never goes through the command line's sync,
    which spaces them for its own runs."""

    database: str

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[Self]:
        with collector_spared():
            self.setup_for_execution(context)
            try:
                yield self
            finally:
                self.teardown_after_execution(context)

    @contextmanager
    def read_only(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A short-lived read-only connection (``None`` while the warehouse does not exist)."""
        with read_only(self.database) as conn:
            yield conn


class HullFirehoseResource(dg.ConfigurableResource):
    """Optional forwarding of applied changes to a Hull firehose (off while ``url`` is unset)."""

    url: str | None = None
    organization: str | None = None
    connector_id: str | None = None
    connector_secret: str | None = None
    requests_per_minute: int | None = None
    """Hull documents no firehose quota: no throttle unless set (then shared per organization)."""

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def client(self) -> HullFirehoseClient:
        missing = [
            name
            for name in ("organization", "connector_id", "connector_secret")
            if not getattr(self, name)
        ]
        if missing:
            raise dg.Failure(
                "HULL_FIREHOSE_URL is set but forwarding also needs "
                + ", ".join(f"HULL_{m.upper()}" for m in missing),
                allow_retries=False,
            )
        limiter = PROCESS_LIMITERS.get(
            ("hull", self.url or "", self.organization or ""), self.requests_per_minute
        )
        return HullFirehoseClient(
            self.url, self.organization, self.connector_id, self.connector_secret, limiter=limiter
        )


def hull_firehose_resource() -> HullFirehoseResource:
    """Secrets as EnvVar when forwarding is configured; an inert resource otherwise.

    A forwarding that cannot work is refused at start-up (``ConfigError``: the command exits
    2) rather than at the first batch: every variable set, and a connector id as Hull issues it.
    """
    if not os.environ.get("HULL_FIREHOSE_URL"):
        return HullFirehoseResource()
    missing = [
        name
        for name in ("HULL_ORGANIZATION", "HULL_CONNECTOR_ID", "HULL_CONNECTOR_SECRET")
        if not os.environ.get(name)
    ]
    if missing:
        raise ConfigError(
            "environment", missing[0], "HULL_FIREHOSE_URL is set, so forwarding also needs it"
        )
    try:
        check_connector_id(os.environ["HULL_CONNECTOR_ID"])
    except ValueError as exc:
        raise ConfigError("environment", "HULL_CONNECTOR_ID", str(exc)) from None
    return HullFirehoseResource(
        url=os.environ["HULL_FIREHOSE_URL"],
        organization=os.environ.get("HULL_ORGANIZATION"),
        connector_id=os.environ.get("HULL_CONNECTOR_ID"),
        connector_secret=dg.EnvVar("HULL_CONNECTOR_SECRET")
        if os.environ.get("HULL_CONNECTOR_SECRET")
        else None,
    )
