#!/usr/bin/env bash
# Installs Threadline without test extras into a fresh virtualenv (not editable: as a user gets it) and checks it
# from outside the repository: modules import, imports match the declared dependencies, every --help works.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
source "$repo/scripts/_python.sh"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
# From exactly the files the agent image copies (deploy/Dockerfile's COPY lines), so a module the image would lack
# fails here; and not from the tree itself, where an earlier in-tree build leaves build/ with stale modules.
mkdir "$work/src"
while read -r _ args; do
    read -ra words <<<"$args"
    for source in "${words[@]:0:${#words[@]}-1}"; do
        for path in "$repo"/$source; do  # unquoted: a COPY source may be a glob
            cp -r "$path" "$work/src/${words[-1]}"
        done
    done
done < <(grep '^COPY ' "$repo/deploy/Dockerfile")
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +  # as .dockerignore keeps them out of the image
PYTHONWARNINGS=ignore "$work/venv/bin/python" -m pip install --quiet "$work/src"
cd "$work"
THREADLINE_HOME="$work/home" "$work/venv/bin/python" "$repo/scripts/check_install.py"
