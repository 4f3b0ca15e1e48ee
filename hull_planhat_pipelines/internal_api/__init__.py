"""The internal users API: Planhat team members managed with the connector's credentials.

``create_app`` builds the FastAPI app; ``run_internal_api`` is the ``hull-planhat internal-api``
command, configured from the environment.
"""

from hull_planhat_pipelines.internal_api.app import create_app
from hull_planhat_pipelines.internal_api.models import UserCreate, UserUpdate
from hull_planhat_pipelines.internal_api.serve import (
    InternalApiConfigError,
    InternalApiSettings,
    app_from_settings,
    run_internal_api,
    serve,
)

__all__ = [
    "InternalApiConfigError",
    "InternalApiSettings",
    "UserCreate",
    "UserUpdate",
    "app_from_settings",
    "create_app",
    "run_internal_api",
    "serve",
]
