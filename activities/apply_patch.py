"""`apply_patch`: a unified diff (`git diff`) or a V4A patch (`*** Begin Patch`, as OpenAI models write them)
applied to files under the working directory, all or nothing.

Every change is computed in memory first; only when every hunk of every file applies are the files written. A hunk
that does not apply is an error the model can act on: which file, which hunk, and the lines that were expected.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path


class PatchError(ValueError):
    """The patch cannot be applied; nothing was changed."""


@dataclasses.dataclass
class Hunk:
    lines: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(' ' | '-' | '+', text) in order."""
    anchor: str = ""

    @property
    def old(self) -> list[str]:
        return [text for kind, text in self.lines if kind in " -"]

    @property
    def new(self) -> list[str]:
        return [text for kind, text in self.lines if kind in " +"]


@dataclasses.dataclass
class FileChange:
    kind: str  # add | update | delete
    path: str
    move_to: str | None = None
    hunks: list[Hunk] = dataclasses.field(default_factory=list)


_HUNK_HEADER = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")


def parse_patch(patch: str) -> list[FileChange]:
    lines = patch.replace("\r\n", "\n").split("\n")
    if any(line.strip() == "*** Begin Patch" for line in lines[:3]):
        return _parse_v4a(lines)
    return _parse_unified(lines)


def _parse_v4a(lines: list[str]) -> list[FileChange]:
    changes: list[FileChange] = []
    current: FileChange | None = None
    for line in lines:
        if line.strip() in ("*** Begin Patch", "*** End Patch", "*** End of File") or (not line and current is None):
            continue
        if line.startswith("*** Add File: "):
            current = FileChange("add", line[14:].strip(), hunks=[Hunk()])
        elif line.startswith("*** Update File: "):
            current = FileChange("update", line[17:].strip())
        elif line.startswith("*** Delete File: "):
            current = FileChange("delete", line[17:].strip())
        elif line.startswith("*** Move to: ") and current is not None:
            current.move_to = line[13:].strip()
            continue
        elif current is None:
            raise PatchError(f"the patch has a line outside any file: {line!r}")
        elif line.startswith("@@"):
            current.hunks.append(Hunk(anchor=line[2:].strip()))
            continue
        else:
            if current.kind == "update" and not current.hunks:
                current.hunks.append(Hunk())
            if not current.hunks:
                raise PatchError(f"{current.path}: a line where none belongs: {line!r}")
            kind, text = (line[0], line[1:]) if line and line[0] in " -+" else (" ", line)
            if current.kind == "add" and kind != "+":
                raise PatchError(f"{current.path}: a new file's lines all start with '+'")
            current.hunks[-1].lines.append((kind, text))
            continue
        changes.append(current)
    return _check(changes)


def _parse_unified(lines: list[str]) -> list[FileChange]:
    changes: list[FileChange] = []
    current: FileChange | None = None
    old_path = new_path = None
    for line in lines:
        if line.startswith("diff --git "):
            current, old_path, new_path = None, None, None
        elif line.startswith("rename from "):
            old_path = line[12:].strip()
        elif line.startswith("rename to "):
            new_path = line[10:].strip()
            current = FileChange("update", old_path or new_path, move_to=new_path)
            changes.append(current)
        elif line.startswith("--- "):
            old_path = _strip_prefix(line[4:])
        elif line.startswith("+++ "):
            new_path = _strip_prefix(line[4:])
            if old_path is None and new_path is None:
                raise PatchError("a file header names neither an old nor a new file")
            if current is not None and current.move_to == new_path:
                continue
            kind = "add" if old_path is None else "delete" if new_path is None else "update"
            path = new_path if kind == "add" else old_path
            current = FileChange(kind, path or "", move_to=new_path if kind == "update" and new_path != old_path
                                 else None)
            changes.append(current)
        elif _HUNK_HEADER.match(line):
            if current is None:
                raise PatchError(f"a hunk before any file header: {line!r}")
            current.hunks.append(Hunk())
        elif current is not None and current.hunks and line[:1] in (" ", "-", "+"):
            current.hunks[-1].lines.append((line[0], line[1:]))
        elif current is not None and current.hunks and line == "":
            current.hunks[-1].lines.append((" ", ""))
    return _check(changes)


def _strip_prefix(name: str) -> str | None:
    name = name.split("\t")[0].strip()
    if name == "/dev/null":
        return None
    return name[2:] if name[:2] in ("a/", "b/") else name


def _check(changes: list[FileChange]) -> list[FileChange]:
    if not changes:
        raise PatchError("the patch changes no file: write a unified diff, or *** Begin Patch ... *** End Patch")
    return changes


def _inside(root: Path, path: str) -> Path:
    target = (root / path).resolve()
    if not path or Path(path).is_absolute() or not target.is_relative_to(root.resolve()):
        raise PatchError(f"{path!r} is outside the working directory: use a path relative to it")
    return target


def _apply_hunks(path: str, text: str, hunks: list[Hunk]) -> str:
    lines = text.split("\n")
    trailing = lines[-1] == ""
    if trailing:
        lines.pop()
    position = 0
    for number, hunk in enumerate(hunks, 1):
        old = hunk.old
        while old and old[-1] == "" and hunk.lines and hunk.lines[-1] == (" ", ""):
            old, hunk.lines = old[:-1], hunk.lines[:-1]  # a blank context line a diff tool added at the end
        start = position
        if hunk.anchor:
            anchored = next((n for n in range(position, len(lines)) if lines[n].strip() == hunk.anchor), None)
            if anchored is not None:
                start = anchored
        found = _find(lines, old, start)
        if found is None:
            expected = "\n".join(old) or "(nothing)"
            raise PatchError(f"{path}: hunk {number} does not apply: these lines were not found in order "
                             f"(from line {start + 1} on):\n{expected}\nRead the file again and rewrite that hunk; "
                             "nothing was changed")
        lines[found:found + len(old)] = hunk.new
        position = found + len(hunk.new)
    return "\n".join(lines) + ("\n" if trailing or not lines else "")


def _find(lines: list[str], old: list[str], start: int) -> int | None:
    if not old:
        return start if start <= len(lines) else None
    for exact in (True, False):
        for n in range(start, len(lines) - len(old) + 1):
            window = lines[n:n + len(old)]
            if window == old if exact else [w.rstrip() for w in window] == [o.rstrip() for o in old]:
                return n
    return None


def apply_patch(root: Path, patch: str) -> str:
    """Applies `patch` under `root`, all or nothing; returns what it did, one line per file."""
    changes = parse_patch(patch)
    writes: dict[Path, str | None] = {}
    report = []
    for change in changes:
        target = _inside(root, change.path)
        if change.kind == "add":
            if target.exists() or target in writes:
                raise PatchError(f"{change.path} already exists: update it instead of adding it")
            writes[target] = "\n".join(change.hunks[0].new if change.hunks else []) + "\n"
            report.append(f"added {change.path}")
            continue
        current = writes.get(target) if target in writes else (target.read_text() if target.is_file() else None)
        if current is None:
            raise PatchError(f"{change.path} does not exist in the working directory")
        if change.kind == "delete":
            writes[target] = None
            report.append(f"deleted {change.path}")
            continue
        updated = _apply_hunks(change.path, current, change.hunks)
        if change.move_to:
            moved = _inside(root, change.move_to)
            if moved.exists() and moved != target:
                raise PatchError(f"cannot move {change.path} to {change.move_to}: it exists")
            writes[target], writes[moved] = None, updated
            report.append(f"moved {change.path} to {change.move_to}" + (" and updated it" if change.hunks else ""))
        else:
            writes[target] = updated
            report.append(f"updated {change.path} ({len(change.hunks)} hunk{'s' if len(change.hunks) != 1 else ''})")
    for target, content in writes.items():
        if content is None:
            target.unlink(missing_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    return "\n".join(report)
