"""Shared fixtures, as plugins: each emulated API's fixtures live in ``fixtures/<api>.py``;
``fixtures/processes.py`` fails the session if a process a test started outlives it;
``longest_first.py`` starts the longest test files first."""

pytest_plugins = [
    "hull_planhat_pipelines_tests.fixtures.copper",
    "hull_planhat_pipelines_tests.fixtures.hull",
    "hull_planhat_pipelines_tests.fixtures.planhat",
    "hull_planhat_pipelines_tests.fixtures.processes",
    "hull_planhat_pipelines_tests.longest_first",
]
