"""Run the internal users API as a web service, configured from the environment.

It refuses to start without the connector credentials, the organization and the Planhat token:
a service that would answer every request 401, 403 or 502 is better never started.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import logging.config
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.internal_api.app import create_app

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.planhat.com"
DEFAULT_ANALYTICS_URL = "https://analytics.planhat.com"
REQUIRED = ("HULL_CONNECTOR_ID", "HULL_CONNECTOR_SECRET", "HULL_ORGANIZATION", "PLANHAT_API_TOKEN")


class InternalApiConfigError(ValueError):
    """The environment lacks what the service needs; the message names the variables."""


@dataclass(frozen=True, repr=False)
class InternalApiSettings:
    """Everything the service reads from the environment (``repr`` shows no secret)."""

    api_url: str
    analytics_url: str
    api_token: str
    tenant_token: str
    connector_id: str
    connector_secret: str
    organization: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InternalApiSettings:
        env = os.environ if environ is None else environ

        def value(name: str, default: str = "") -> str:
            return (env.get(name) or default).strip()

        missing = [name for name in REQUIRED if not value(name)]
        if missing:
            raise InternalApiConfigError(
                "the internal API needs " + ", ".join(missing) + " in the environment"
            )
        return cls(
            api_url=value("PLANHAT_API_URL", DEFAULT_API_URL),
            analytics_url=value("PLANHAT_ANALYTICS_URL", DEFAULT_ANALYTICS_URL),
            api_token=value("PLANHAT_API_TOKEN"),
            tenant_token=value("PLANHAT_TENANT_TOKEN"),
            connector_id=value("HULL_CONNECTOR_ID"),
            connector_secret=value("HULL_CONNECTOR_SECRET"),
            organization=value("HULL_ORGANIZATION"),
        )

    def __repr__(self) -> str:
        return f"InternalApiSettings(api_url={self.api_url!r}, organization={self.organization!r})"


def app_from_settings(settings: InternalApiSettings) -> FastAPI:
    """The app over a Planhat client built from ``settings`` (built when the server starts)."""

    def client() -> PlanhatClient:
        return PlanhatClient(
            settings.api_url, settings.analytics_url, settings.api_token, settings.tenant_token
        )

    return create_app(
        client,
        connector_id=settings.connector_id,
        connector_secret=settings.connector_secret,
        organization=settings.organization,
        secrets=(settings.api_token, settings.tenant_token),
    )


def serve(
    host: str = "127.0.0.1", port: int = 8080, *, environ: Mapping[str, str] | None = None
) -> None:
    """Serve until interrupted; raises ``InternalApiConfigError`` when the environment is incomplete."""
    app = app_from_settings(InternalApiSettings.from_env(environ))
    log_config = _log_config()
    logging.config.dictConfig(log_config)
    if not _is_loopback(host):
        logger.warning(
            "serving on %s: Basic credentials travel in clear text, put TLS in front", host
        )
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config)


def run_internal_api(host: str = "127.0.0.1", port: int = 8080) -> int:
    """The ``hull-planhat internal-api`` command: exit 2 with a clear message when misconfigured."""
    try:
        serve(host, port)
    except InternalApiConfigError as exc:
        print(f"hull-planhat internal-api: {exc}", file=sys.stderr)
        return 2
    return 0


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, extended to this package's loggers (Planhat failures, errors)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["hull_planhat_pipelines"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return config


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
