# Creates .venv with Python 3.11+ and installs Threadline into it (with test extras when $1 = test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "error: Threadline needs Python 3.11 or newer (python3 not found or too old)" >&2
    exit 1
fi
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
