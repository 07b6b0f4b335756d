#!/usr/bin/env bash
# Installs Threadline, starts the embedded Temporal server, runs an agent on the offline model and asks it one thing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
message="${*:-Hello! What can you do?}"
exec .venv/bin/threadline process run --room quickstart --agent-name assistant --model offline -m "$message"
