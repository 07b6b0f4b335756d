"""Room storage: files an agent saves, attachments and large tool output, kept per room on the local disk."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class StoragePathError(ValueError):
    """A path that would leave the room's storage."""


def threadline_home() -> Path:
    return Path(os.environ.get("THREADLINE_HOME") or Path.home() / ".threadline").expanduser()


def room_dir(room: str) -> Path:
    return threadline_home() / "rooms" / room


class RoomStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_room(cls, room: str) -> RoomStorage:
        return cls(room_dir(room) / "storage")

    def resolve(self, path: str) -> Path:
        relative = PurePosixPath(path.replace("\\", "/"))
        if not path.strip() or relative.is_absolute() or ".." in relative.parts:
            raise StoragePathError(f"storage path {path!r} must be relative to the room and must not contain '..'")
        return self.root.joinpath(*relative.parts)

    def write(self, path: str, content: str | bytes) -> int:
        target = self.resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        partial.replace(target)
        return len(data)

    def read_text(self, path: str) -> str:
        target = self.resolve(path)
        if not target.is_file():
            raise FileNotFoundError(f"no file at {path!r} in room storage")
        return target.read_text(errors="replace")

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
