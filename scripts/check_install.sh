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
PYTHONWARNINGS=ignore "$work/venv/bin/python" -m pip install --quiet "$repo"
cd "$work"
THREADLINE_HOME="$work/home" "$work/venv/bin/python" "$repo/scripts/check_install.py"
