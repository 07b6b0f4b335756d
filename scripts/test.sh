#!/usr/bin/env bash
# Installs Threadline with its test tools and runs the whole test suite (pytest arguments pass through).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test
exec .venv/bin/python -m pytest "$@"
