"""`--shell` and `--apply-patch`: a command run in a sandbox, and patches applied, in the thread's working directory.

The default sandbox is bubblewrap: the system's /usr and /etc read-only, the working directory read-write at
/work, a fresh /tmp, nothing else of the machine (no THREADLINE_HOME, no home directory), no network unless
`--shell-network`, an empty environment but for PATH, HOME and what `--shell-copy-env` / `--shell-set-env` name,
and limits on CPU time, memory, processes and wall-clock time. Run as root (a container), the command runs as
`nobody`, so the process limit holds. A missing sandbox is a start-up error, never a silent fallback; a plain local
process needs both `--shell-image none` and `--shell-unsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from threadline.activities.apply_patch import PatchError, apply_patch
from threadline.activities.storage import RoomStorage, room_dir
from threadline.activities.tools import Tool, current_call
from threadline.models.spec import AgentSpec, ShellSettings

CAPTURE_BYTES = 1024 * 1024
"""Of each of stdout and stderr, what is kept (the rest is counted); past 16 KiB the result goes to storage."""
NOBODY = 65534
PROCESS_LIMIT = 128


class ShellConfigError(ValueError):
    """A shell setting that cannot work here (no sandbox installed, an unsafe choice not confirmed)."""


def check_shell(settings: ShellSettings) -> None:
    if not settings.enabled:
        return
    if settings.image == "none":
        if not settings.unsafe:
            raise ShellConfigError("--shell-image none runs commands as plain local processes with the agent's "
                                   "rights: add --shell-unsafe to confirm, or leave --shell-image out for the sandbox")
        return
    if settings.image:
        if not (shutil.which("docker") or shutil.which("podman")):
            raise ShellConfigError(f"--shell-image {settings.image}: neither docker nor podman is installed here")
        return
    if shutil.which("bwrap") is None:
        raise ShellConfigError("--shell needs bubblewrap (bwrap) for its sandbox: install it (Debian/Ubuntu: "
                               "apt-get install bubblewrap), or run commands in a container with --shell-image IMAGE")


def working_dir(spec: AgentSpec, storage: RoomStorage, thread_id: str) -> Path:
    """`--working-dir`, or the thread's own folder: in room storage when it is on this disk, else beside the
    room's thread store (object storage cannot be a process's directory)."""
    if spec.shell.working_dir:
        path = Path(spec.shell.working_dir).expanduser()
    else:
        _, _, thread_path = thread_id.partition("/")
        base = storage.root if hasattr(storage, "root") else room_dir(spec.room) / "work"
        path = Path(base) / thread_path / "work"
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and not spec.shell.image:
        os.chown(path, NOBODY, NOBODY)
    return path


def sandbox_argv(settings: ShellSettings, workdir: Path, command: str, env: dict[str, str]) -> list[str]:
    limits = ["prlimit", f"--cpu={settings.cpu_seconds}", f"--as={settings.memory_mb * 1024 * 1024}",
              f"--nproc={PROCESS_LIMIT}", "--"]
    variables = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/work", "LANG": "C.UTF-8",
                 **{name: env[name] for name in settings.copy_env if name in env}, **settings.set_env}
    if settings.image == "none":
        return [*limits, "/bin/sh", "-c", command]
    if settings.image:
        runtime = shutil.which("docker") or shutil.which("podman") or "docker"
        return [runtime, "run", "--rm", "-i", "--network", "bridge" if settings.network else "none",
                "--memory", f"{settings.memory_mb}m", "--pids-limit", str(PROCESS_LIMIT), "-v", f"{workdir}:/work",
                "-w", "/work", *(a for k, v in variables.items() for a in ("-e", f"{k}={v}")), settings.image,
                "/bin/sh", "-c", command]
    argv = ["bwrap", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--bind", str(workdir), "/work", "--chdir", "/work"]
    for name in ("bin", "lib", "lib64", "sbin"):
        link = Path("/") / name
        if link.is_symlink():
            argv += ["--symlink", os.readlink(link), f"/{name}"]
        elif link.is_dir():
            argv += ["--ro-bind", str(link), f"/{name}"]
    argv += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
             "--new-session", "--clearenv"]
    if not settings.network:
        argv.append("--unshare-net")
    if os.geteuid() != 0:
        argv.append("--unshare-user")
    for name, value in variables.items():
        argv += ["--setenv", name, value]
    if os.geteuid() == 0:
        argv += ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return [*argv, *limits, "/bin/sh", "-c", command]


async def _capture(stream: asyncio.StreamReader) -> tuple[bytes, int]:
    kept, total = bytearray(), 0
    while chunk := await stream.read(65536):
        total += len(chunk)
        if len(kept) < CAPTURE_BYTES:
            kept += chunk[:CAPTURE_BYTES - len(kept)]
    return bytes(kept), total


def _shown(name: str, data: bytes, total: int) -> str:
    text = data.decode(errors="replace")
    note = f"\n[{total - len(data):,} more bytes not kept]" if total > len(data) else ""
    return f"--- {name} ---\n{text}{note}"


async def run_command(settings: ShellSettings, workdir: Path, command: str, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *sandbox_argv(settings, workdir, command, env), cwd=workdir, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert process.stdout is not None and process.stderr is not None
    readers = asyncio.gather(_capture(process.stdout), _capture(process.stderr))
    try:
        (out, out_total), (err, err_total) = await asyncio.wait_for(asyncio.shield(readers),
                                                                    settings.timeout_seconds)
        code = await process.wait()
    except (TimeoutError, asyncio.CancelledError) as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        (out, out_total), (err, err_total) = await readers
        await process.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        return (f"error: the command ran past its time limit of {settings.timeout_seconds:g} s and was stopped\n"
                f"{_shown('stdout', out, out_total)}\n{_shown('stderr', err, err_total)}")
    verdict = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
    if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU, -signal.SIGKILL):
        verdict += f" (the CPU limit is {settings.cpu_seconds} s, memory {settings.memory_mb} MiB)"
    return f"{verdict}\n{_shown('stdout', out, out_total)}\n{_shown('stderr', err, err_total)}"


def shell_tools(spec: AgentSpec, storage: RoomStorage, env: dict[str, str]) -> list[Tool]:
    settings = spec.shell
    tools: list[Tool] = []

    def workdir() -> Path:
        return working_dir(spec, storage, current_call.get().thread_id)

    async def shell(command: str) -> str:
        return await run_command(settings, await asyncio.to_thread(workdir), command, env)

    async def apply_patch_tool(patch: str) -> str:
        try:
            return await asyncio.to_thread(lambda: apply_patch(workdir(), patch))
        except PatchError as e:
            return f"error: {e}"

    if settings.enabled:
        where = "with network" if settings.network else "without network"
        tools.append(Tool("shell", f"Run a shell command (/bin/sh -c) in a sandbox {where}, in the thread's "
                                   "working directory (/work, kept between calls); returns the exit code, stdout "
                                   "and stderr.", shell, timeout_seconds=settings.timeout_seconds + 10,
                          max_attempts=2))
    if settings.apply_patch:
        apply_patch_tool.__name__ = "apply_patch"
        tools.append(Tool("apply_patch", "Apply a patch to files in the working directory, all or nothing: a "
                                         "unified diff, or *** Begin Patch / *** Update File: PATH / @@ / -old / "
                                         "+new / *** End Patch.", apply_patch_tool, timeout_seconds=30))
    return tools
