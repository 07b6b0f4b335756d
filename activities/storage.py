"""Room storage: files an agent saves, attachments and large tool output, kept per room.

The backend comes from the agent's storage URL (`--storage-url`, `AgentSpec.storage_url`):

- none (the default): the local disk, `~/.threadline/rooms/<room>/storage` (`THREADLINE_HOME` moves `~/.threadline`);
- a local directory (`/mnt/shared/rooms` or `file:///mnt/shared/rooms`): `<directory>/<room>/`;
- `s3://bucket/prefix`: S3-compatible object storage through fsspec and s3fs, `<bucket>/<prefix>/<room>/`, so agents on
  several machines share it. The endpoint comes from `THREADLINE_S3_ENDPOINT_URL` or `AWS_ENDPOINT_URL` (unset: AWS),
  the region from `AWS_REGION` (or `AWS_DEFAULT_REGION`), credentials from botocore's usual chain
  (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `~/.aws`, an instance role).

Every backend refuses paths that would leave the room (`..`, absolute paths). Local writes are atomic (a partial file
renamed into place); an S3 PUT is atomic by nature.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from threadline.models.spec import AgentSpec


class StoragePathError(ValueError):
    """A path that would leave the room's storage."""


class StorageUnavailable(OSError):
    """Storage that cannot be reached or written; names the storage's URL (`filename`)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(errno.EIO, reason, url)
        self.url, self.reason = url, reason

    def __str__(self) -> str:
        return f"room storage {self.url} is not usable: {self.reason}"


def threadline_home() -> Path:
    return Path(os.environ.get("THREADLINE_HOME") or Path.home() / ".threadline").expanduser()


def room_dir(room: str) -> Path:
    return threadline_home() / "rooms" / room


def relative_key(path: str) -> str:
    """A storage path as `a/b/c`, relative to the room; refuses `..`, absolute paths and empty paths."""
    relative = PurePosixPath(path.replace("\\", "/"))
    if not path.strip() or relative.is_absolute() or ".." in relative.parts:
        raise StoragePathError(f"storage path {path!r} must be relative to the room and must not contain '..'")
    return "/".join(part for part in relative.parts if part not in ("", "."))


class RoomStorage:
    """One room's storage on the local disk (the default backend; see `ObjectRoomStorage` for S3)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return str(self.root)

    @classmethod
    def for_room(cls, room: str) -> RoomStorage:
        """The default: `~/.threadline/rooms/<room>/storage` on this machine."""
        return cls(room_dir(room) / "storage")

    @classmethod
    def for_url(cls, url: str | None, room: str, env: Mapping[str, str] | None = None) -> RoomStorage:
        """The room's storage under `url` (`<url>/<room>/`); None or '' is the local default."""
        if not url or not url.strip():
            return cls.for_room(room)
        parsed = urlparse(url.strip())
        if parsed.scheme == "s3":
            return ObjectRoomStorage.s3(url.strip(), room, os.environ if env is None else env)
        if parsed.scheme == "file":
            return cls(Path(unquote(parsed.path)).expanduser() / room)
        if not parsed.scheme or len(parsed.scheme) == 1:  # a path (C:\ on Windows)
            return cls(Path(url.strip()).expanduser() / room)
        raise ValueError(f"storage URL {url!r}: expected s3://BUCKET[/PREFIX], file:///DIR or a directory")

    @classmethod
    def for_spec(cls, spec: AgentSpec, env: Mapping[str, str] | None = None) -> RoomStorage:
        """The storage the agent's spec configures (`--storage-url`); what workers and channels use."""
        return cls.for_url(spec.storage_url, spec.room, env)

    def resolve(self, path: str) -> Path:
        return self.root.joinpath(*relative_key(path).split("/"))

    def write(self, path: str, content: str | bytes) -> int:
        target = self.resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        partial.replace(target)
        return len(data)

    def read_bytes(self, path: str) -> bytes:
        target = self.resolve(path)
        if not target.is_file():
            raise FileNotFoundError(f"no file at {path!r} in room storage")
        return target.read_bytes()

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode(errors="replace")

    def list(self, path: str = "") -> list[str]:
        base = self.resolve(path) if path.strip() else self.root
        if not base.exists():
            return []
        if base.is_file():
            return [path]
        return sorted(
            str(p.relative_to(self.root).as_posix()) + ("/" if p.is_dir() else "")
            for p in base.iterdir()
            if not p.name.startswith(".")
        )

    def check_writable(self) -> None:
        """Fails with OSError when the storage cannot be written."""
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / ".threadline-write-check"
        probe.write_text("ok")
        probe.unlink()


class ObjectRoomStorage(RoomStorage):
    """One room's storage in an fsspec filesystem (S3-compatible object storage): `root` is `bucket/prefix/room`."""

    def __init__(self, fs: Any, root: str, url: str) -> None:  # noqa: ANN401 - an fsspec AbstractFileSystem
        self.fs = fs
        self.root = root.rstrip("/")  # type: ignore[assignment]
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    @classmethod
    def s3(cls, url: str, room: str, env: Mapping[str, str]) -> ObjectRoomStorage:
        parsed = urlparse(url)
        bucket, prefix = parsed.netloc, parsed.path.strip("/")
        if not bucket:
            raise ValueError(f"storage URL {url!r}: expected s3://BUCKET[/PREFIX]")
        root = "/".join(p for p in (bucket, prefix, room) if p)
        return cls(s3_filesystem(env), root, f"s3://{root}")

    def resolve(self, path: str) -> str:  # type: ignore[override]
        return f"{self.root}/{relative_key(path)}".rstrip("/")

    def write(self, path: str, content: str | bytes) -> int:
        target = self.resolve(path)
        data = content.encode() if isinstance(content, str) else content
        self.fs.pipe_file(target, data)
        return len(data)

    def read_bytes(self, path: str) -> bytes:
        target = self.resolve(path)
        try:
            return self.fs.cat_file(target)
        except (FileNotFoundError, IsADirectoryError) as e:
            raise FileNotFoundError(f"no file at {path!r} in room storage") from e

    def list(self, path: str = "") -> list[str]:
        base = self.resolve(path) if path.strip() else self.root
        try:
            entries = self.fs.ls(base, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        if len(entries) == 1 and entries[0]["type"] == "file" and entries[0]["name"].rstrip("/") == base:
            return [path]
        found = set()
        for entry in entries:
            name = entry["name"].rstrip("/")
            if not name.startswith(self.root + "/") or name.rpartition("/")[2].startswith("."):
                continue
            found.add(name[len(self.root) + 1:] + ("/" if entry["type"] == "directory" else ""))
        return sorted(found)

    def check_writable(self) -> None:
        probe = f"{self.root}/.threadline-write-check"
        try:
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except Exception as e:  # noqa: BLE001 - botocore, aiohttp and s3fs errors alike: name the storage
            raise StorageUnavailable(self.url, f"cannot write to it: {e.__class__.__name__}: {e}") from e


def s3_filesystem(env: Mapping[str, str]) -> Any:  # noqa: ANN401 - s3fs.S3FileSystem
    """An s3fs filesystem configured from the environment; listings are never cached, since other machines write."""
    try:
        import s3fs
    except ImportError as e:  # pragma: no cover - a dependency of Threadline
        raise ValueError("s3:// room storage needs the s3fs package (pip install s3fs)") from e
    endpoint = env.get("THREADLINE_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
    return s3fs.S3FileSystem(
        endpoint_url=endpoint,
        # None: botocore's own chain (~/.aws, an instance or pod role).
        key=env.get("AWS_ACCESS_KEY_ID") or None,
        secret=env.get("AWS_SECRET_ACCESS_KEY") or None,
        token=env.get("AWS_SESSION_TOKEN") or None,
        client_kwargs={"region_name": region} if region else {},
        # Fail within seconds when the endpoint is down; s3fs retries throttling and transient errors on its own.
        config_kwargs={"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}},
        use_listings_cache=False,
    )


class MountedStorage:
    """What the storage tools see: the room's storage with other folders mounted into it (`--storage-tool-local-path`
    a folder of this machine, `--storage-tool-room-path` another path of the room's storage), each read-only or
    read-write. A path under a mount goes to its source; a write into a read-only mount is refused."""

    def __init__(self, base: RoomStorage, mounts: list[tuple[str, RoomStorage, str, bool]]) -> None:
        """`mounts`: (mount point, source storage, path prefix in the source, writable)."""
        self.base = base
        self.mounts = sorted(((relative_key(m), s, p, w) for m, s, p, w in mounts), key=lambda m: -len(m[0]))

    @classmethod
    def for_spec(cls, spec: AgentSpec, base: RoomStorage) -> RoomStorage | MountedStorage:
        if not spec.storage_mounts:
            return base
        return cls(base, [(m.mount, RoomStorage(Path(m.source).expanduser()) if m.kind == "local" else base,
                           "" if m.kind == "local" else relative_key(m.source), m.writable)
                          for m in spec.storage_mounts])

    def _route(self, path: str) -> tuple[RoomStorage, str, str | None, bool]:
        key = relative_key(path) if path.strip() else ""
        for mount, source, prefix, writable in self.mounts:
            if key == mount or key.startswith(mount + "/"):
                inner = key[len(mount):].strip("/")
                return source, "/".join(p for p in (prefix, inner) if p), mount, writable
        return self.base, key, None, True

    def write(self, path: str, content: str | bytes) -> int:
        source, inner, mount, writable = self._route(path)
        if not writable:
            raise StoragePathError(f"{path} is in {mount}/, which is mounted read-only: write somewhere else")
        return source.write(inner, content)

    def read_text(self, path: str) -> str:
        source, inner, _, _ = self._route(path)
        return source.read_text(inner)

    def list(self, path: str = "") -> list[str]:
        source, inner, mount, _ = self._route(path)
        if mount is None:
            listed = self.base.list(inner) if inner else self.base.list()
            if not inner:
                listed = sorted({*listed, *(m[0].split("/")[0] + "/" for m in self.mounts)})
            return listed
        entries = source.list(inner) if inner else source.list()
        cut = len(inner) + 1 if inner else 0
        return [f"{mount}/{entry[cut:]}" if inner else f"{mount}/{entry}" for entry in entries]
