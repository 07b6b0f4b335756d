# Sets $python to a Python 3.11+ on PATH, or exits with a clear error.
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
