"""Run a real Temporal dev server (``temporal server start-dev``) for tests.

Usage (sync, e.g. a session fixture)::

    with TemporalDevServer() as srv:
        client = await Client.connect(srv.address)
        ...
        srv.restart()        # same port, same sqlite db: workflows survive

Usage from async code (does not block the running event loop while waiting)::

    srv = TemporalDevServer()
    await srv.astart()
    await srv.arestart()
    await srv.astop()

The command line is the embedded server's (``cli/embedded.server_command``:
Threadline's search attributes, and its dynamic config unless
``embedded_config=False``). State lives in ``<data_dir>/temporal.db`` and the server's stdout/stderr are
appended to ``<data_dir>/temporal-server.log``; ``data_dir`` defaults to a
fresh temp directory, removed by :meth:`close` / ``__exit__`` unless
``keep_data=True``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

from threadline.cli.embedded import server_command
from threadline.workflows.search_attributes import SEARCH_ATTRIBUTES

__all__ = ["TemporalDevServer", "TemporalServerError", "free_port"]

_T = TypeVar("_T")
_LIVE: set[TemporalDevServer] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TemporalServerError(RuntimeError):
    pass


def _run_coro(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from sync code, even if this thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            error.append(e)

    t = threading.Thread(target=target, name="TemporalDevServer-wait", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


class TemporalDevServer:
    """A ``temporal server start-dev`` subprocess bound to 127.0.0.1."""

    def __init__(
        self,
        port: int | None = None,
        *,
        namespaces: Sequence[str] = (),
        data_dir: str | os.PathLike[str] | None = None,
        db_filename: str | os.PathLike[str] | None = None,
        log_level: str = "warn",
        extra_args: Sequence[str] = (),
        start_timeout: float = 60.0,
        keep_data: bool = False,
        embedded_config: bool = True,
    ) -> None:
        """`embedded_config`: with the dynamic config the embedded server runs with (cli/embedded.py); False is the
        stock dev server."""
        self.port = port if port is not None else free_port()
        self.namespaces = list(namespaces)
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="threadline-temporal-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_filename = Path(db_filename) if db_filename is not None else self.data_dir / "temporal.db"
        self.log_path = self.data_dir / "temporal-server.log"
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.keep_data = keep_data
        self.embedded_config = embedded_config
        self.last_start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # ------------------------------------------------------------ properties
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def target_host(self) -> str:  # alias matching temporalio naming
        return self.address

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        # Tests run on the server `process run` starts.
        return server_command(self.port, None, self.db_filename, namespaces=self.namespaces, log_level=self.log_level,
                              tuned=self.embedded_config) + self.extra_args

    def log_tail(self, max_bytes: int = 4000, *, since_start: bool = True) -> str:
        """The end of the server log (by default only output of the current/last start)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                begin = max(self._log_offset if since_start else 0, end - max_bytes)
                f.seek(begin)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ lifecycle
    def _spawn(self) -> None:
        if self.running:
            raise TemporalServerError(f"Temporal dev server already running on {self.address}")
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(self.command())}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
            )
        _LIVE.add(self)

    async def _wait_ready(self, deadline: float) -> None:
        from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client

        last_error: BaseException | None = None
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                rc = None if proc is None else proc.returncode
                raise TemporalServerError(
                    f"Temporal dev server exited (rc={rc}) during startup on {self.address}.\n"
                    f"command: {' '.join(self.command())}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            try:
                client = await asyncio.wait_for(Client.connect(self.address, namespace="default"), 5)
                await client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace="default"), timeout=timedelta(seconds=5)
                )
                resp = await client.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace="default"), timeout=timedelta(seconds=5)
                )
                missing = {key.name for key in SEARCH_ATTRIBUTES} - set(resp.custom_attributes)
                if missing:
                    raise TemporalServerError(f"search attributes not registered yet: {sorted(missing)}")
                return
            except Exception as e:  # not ready yet
                last_error = e
            if time.monotonic() >= deadline:
                raise TemporalServerError(
                    f"Temporal dev server on {self.address} not ready after {self.start_timeout:.0f}s; "
                    f"last error: {last_error!r}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            await asyncio.sleep(0.1)

    async def astart(self) -> Self:
        """Start the server and wait until ``default`` namespace is describable."""
        t0 = time.monotonic()
        self._spawn()
        try:
            await self._wait_ready(t0 + self.start_timeout)
        except BaseException:
            self._terminate()
            raise
        self.last_start_seconds = time.monotonic() - t0
        return self

    def start(self) -> Self:
        return _run_coro(self.astart())

    def _terminate(self, grace: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        self._proc = None
        _LIVE.discard(self)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. Data stays for a later start()."""
        self._terminate(grace)

    async def astop(self, grace: float = 10.0) -> None:
        await asyncio.to_thread(self._terminate, grace)

    def kill(self) -> None:
        """SIGKILL immediately (simulates a crash)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self._proc = None
        _LIVE.discard(self)

    def restart(self) -> Self:
        """Stop and start again on the same port and db file (state survives)."""
        self.stop()
        return self.start()

    async def arestart(self) -> Self:
        await self.astop()
        return await self.astart()

    def close(self) -> None:
        """Stop, and remove the temp data dir if we created it (unless keep_data)."""
        self.stop()
        if self._owns_dir and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()
        self.close()

    def __repr__(self) -> str:
        return f"TemporalDevServer(address={self.address!r}, running={self.running}, data_dir={str(self.data_dir)!r})"


@atexit.register
def _kill_leftovers() -> None:
    for srv in list(_LIVE):
        try:
            srv.kill()
        except Exception:
            pass


if __name__ == "__main__":
    srv = TemporalDevServer()
    with srv:
        print(f"{srv.address} ready in {srv.last_start_seconds:.2f}s (data: {srv.data_dir})", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
