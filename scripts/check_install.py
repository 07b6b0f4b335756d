"""Checks Threadline as a user gets it from `pip install .` (no test extras), run by that environment's Python
from outside the repository: everything installs under the one import name `threadline`, every module imports, every third-party import is a declared dependency,
and `threadline --help` and every subcommand's `--help` exit 0. Prints one line per failure; exit 1 on any."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

DISTRIBUTION = "threadline"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_modules(dist: metadata.Distribution) -> dict[str, Path]:
    modules = {}
    for file in dist.files or []:
        if file.suffix != ".py" or file.parts[0].endswith((".dist-info", ".data")) or ".." in file.parts:
            continue
        parts = list(file.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = Path(str(file.locate()))
    return modules


def imported_top_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared(dist: metadata.Distribution) -> set[str]:
    names = set()
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        names.add(canonical(re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0]))
    return names


def command_paths(command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:  # noqa: ANN001
    paths = [prefix]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            paths += command_paths(sub, (*prefix, name))
    return paths


def main() -> int:
    failures: list[str] = []
    dist = metadata.distribution(DISTRIBUTION)
    modules = installed_modules(dist)
    own = {name.split(".")[0] for name in modules}
    if own != {DISTRIBUTION}:
        failures.append(f"installs top-level import names {sorted(own)}; only {DISTRIBUTION!r} belongs on sys.path")
    providers = metadata.packages_distributions()
    allowed = declared(dist)
    for name, path in sorted(modules.items()):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failures.append(f"import {name}: {e.__class__.__name__}: {e}")
        for top in sorted(imported_top_names(path) - own - set(sys.stdlib_module_names)):
            dists = {canonical(d) for d in providers.get(top, [])}
            if not dists:
                failures.append(f"{name} imports {top}, which no installed distribution provides")
            elif not dists & allowed:
                failures.append(f"{name} imports {top} (from {', '.join(sorted(dists))}), not a declared dependency")

    from threadline.cli.app import build_app
    from typer.main import get_command

    script = Path(sys.executable).with_name("threadline")
    paths = command_paths(get_command(build_app()))
    for path in paths:
        result = subprocess.run([str(script), *path, "--help"], capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or "Usage" not in result.stdout:
            failures.append(f"threadline {' '.join(path)} --help: exit {result.returncode}: {result.stderr[-500:]}")
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"checked {len(modules)} modules and {len(paths)} commands' --help: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
