"""``hull-planhat dev``: the sandbox and the Dagster UI (webserver and daemon) in one command.

A development session is throw-away like the sandbox it talks to: unless ``DAGSTER_HOME`` or
``HULL_PLANHAT_WAREHOUSE`` is set, the instance (SQLite, the packaged local ``dagster.yaml``)
and the warehouse live in a session folder removed on exit. A warehouse kept across sessions
would remember deliveries to a sandbox that no longer exists.

``dagster dev`` runs in its own process group, so stopping the session reaches every process
it started (webserver, daemon, their ``dagster api grpc`` code servers, the runs).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests

from hull_planhat_pipelines.settings import CONFIG_ENV_VAR
from hull_planhat_pipelines.warehouse import WAREHOUSE_ENV_VAR

LOCAL_INSTANCE_CONFIG = Path(__file__).parent / "config" / "dagster.yaml"
DEFINITIONS_MODULE = "hull_planhat_pipelines.definitions"
LOCATION_NAME = "hull_planhat_pipelines"  # as in workspace.yaml: the UI's URLs name it
WORKSPACE = f"""load_from:
  - python_module:
      module_name: {DEFINITIONS_MODULE}
      location_name: {LOCATION_NAME}
"""
STOP_GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class DevSession:
    env: dict[str, str]
    dagster_home: Path
    warehouse: Path
    temporary: bool
    log: Path
    workspace: Path


@contextmanager
def dev_session(
    base_env: Mapping[str, str], sandbox_env: Mapping[str, str]
) -> Iterator[DevSession]:
    """The environment of a session: the caller's, the sandbox's, an instance and a warehouse.

    Paths the caller set relative are made absolute: ``dagster dev`` runs in ``DAGSTER_HOME``
    (run anywhere else beside a ``dagster.yaml``, it warns that the file is ignored).
    """
    env = {**base_env, **sandbox_env}
    folder = Path(tempfile.mkdtemp(prefix=".hull_planhat_dev_", dir=os.getcwd()))
    try:
        if env.get("DAGSTER_HOME"):
            home = Path(env["DAGSTER_HOME"]).resolve()
            home.mkdir(parents=True, exist_ok=True)
        else:
            home = folder / "dagster_home"
            home.mkdir()
            shutil.copy(LOCAL_INSTANCE_CONFIG, home / "dagster.yaml")
        warehouse = Path(env.get(WAREHOUSE_ENV_VAR) or folder / "warehouse.duckdb").resolve()
        workspace = folder / "workspace.yaml"
        workspace.write_text(WORKSPACE)
        env["DAGSTER_HOME"] = str(home)
        env[WAREHOUSE_ENV_VAR] = str(warehouse)
        if env.get(CONFIG_ENV_VAR):
            env[CONFIG_ENV_VAR] = str(Path(env[CONFIG_ENV_VAR]).resolve())
        yield DevSession(
            env,
            home,
            warehouse,
            temporary=not base_env.get(WAREHOUSE_ENV_VAR),
            log=folder / "dagster.log",
            workspace=workspace,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def dagster_dev_command(workspace: Path, host: str, port: int) -> list[str]:
    """``dagster dev`` on the session's workspace, quiet: warnings and errors only."""
    return [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "--workspace",
        str(workspace),
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--code-server-log-level",
        "warning",
    ]


def start_process_group(
    command: list[str], env: Mapping[str, str], cwd: Path, log: Path | None = None
) -> subprocess.Popen:
    """Start ``command`` as the leader of a new process group (a new session), its output
    appended to ``log`` when given (the UI shows every run; the console stays readable)."""
    if log is None:
        return subprocess.Popen(command, env=dict(env), cwd=cwd, start_new_session=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_process_group(process: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> int:
    """Interrupt the group's leader (``dagster dev`` shuts its services down cleanly), then
    kill whatever of the group is left: orphaned code servers or runs never outlive a session."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    _signal_group(process.pid, signal.SIGKILL)
    return process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_until_served(
    url: str, process: subprocess.Popen, stop: threading.Event, on_ready: Callable[[], None]
) -> None:
    """Call ``on_ready`` once the webserver answers, unless the session ends first."""
    while not stop.is_set() and process.poll() is None:
        try:
            if requests.get(f"{url}/server_info", timeout=2).ok:
                on_ready()
                return
        except requests.RequestException:
            pass
        stop.wait(0.5)


def log_tail(log: Path, lines: int = 40) -> str:
    """The end of Dagster's log, shown when ``dagster dev`` stops by itself."""
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
