"""How every benchmark hands over its figures: one JSON document on stdout, and in `--out FILE` when given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text + "\n")
    print(text)
