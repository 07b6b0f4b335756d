# Creates .venv with Python 3.11+ and installs Threadline into it (with test extras when $1 = test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/_python.sh
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e ".${extras}"
    touch "$stamp"
fi
