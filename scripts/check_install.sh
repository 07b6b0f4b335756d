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
# From a copy without build/ and *.egg-info, which an earlier in-tree build leaves behind with stale modules.
mkdir "$work/src"
tar -C "$repo" --exclude=./.venv --exclude=./build --exclude='*.egg-info' --exclude=./.git -cf - . | tar -C "$work/src" -xf -
PYTHONWARNINGS=ignore "$work/venv/bin/python" -m pip install --quiet "$work/src"
cd "$work"
THREADLINE_HOME="$work/home" "$work/venv/bin/python" "$repo/scripts/check_install.py"
