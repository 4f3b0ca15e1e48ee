"""Shared fixtures. Each emulated API's fixtures live in ``fixtures/<api>.py``."""

from hull_planhat_pipelines_tests.fixtures.copper import *  # noqa: F403
from hull_planhat_pipelines_tests.fixtures.hull import *  # noqa: F403
from hull_planhat_pipelines_tests.fixtures.planhat import *  # noqa: F403
