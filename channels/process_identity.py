"""Who a worker process is, on its host: `pid@host+start`, its Temporal identity and the name of its attempt journal.

A process id alone is reused: an agent container that restarts in place (`restart: unless-stopped`) runs as pid 1
again, on the same host name, with the same /tmp. The process's start time (in clock ticks since boot, from /proc)
tells the earlier process from the new one; where /proc is missing, the identity is `pid@host`, as the SDK's default.
"""

from __future__ import annotations

import contextlib
import os
import socket
from functools import cache
from pathlib import Path


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), or None where it cannot be read."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    return None


@cache
def process_key() -> str:
    """`pid+start` (`pid` where no start time is known): this process among the others of its host, and the name of
    its attempt journal. An agent process does not fork, so its pid does not change under the cache."""
    start = process_start(os.getpid())
    return f"{os.getpid()}+{start}" if start else str(os.getpid())


def process_identity() -> str:
    pid, plus, start = process_key().partition("+")
    return f"{pid}@{socket.gethostname()}{plus}{start}"


def process_key_is_gone(key: str) -> bool:
    """True when a `pid+start` (or `pid`) key names a process of this host that has exited."""
    pid, _, start = key.partition("+")
    return pid.isdigit() and process_is_gone(int(pid), start or None)


def process_is_gone(pid: int, start: str | None) -> bool:
    """True when process `pid` (started at `start`, when known) has exited: no such process, a zombie, or another
    process that now holds its id."""
    if start is not None:
        current = process_start(pid)
        if current is not None and current != start:
            return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    with contextlib.suppress(OSError):  # /proc is Linux's: elsewhere an unreaped zombie counts as alive
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    return False


def local_process_is_gone(identity: str) -> bool:
    """True when a worker identity (`pid@host+start` or `pid@host`) names a process of this host that has exited.
    Any other identity, and a process still running, count as alive."""
    pid, at, rest = identity.partition("@")
    host, plus, start = rest.partition("+")
    return bool(at) and host == socket.gethostname() and process_key_is_gone(pid + plus + start)
