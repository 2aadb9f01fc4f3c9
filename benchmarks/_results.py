"""What the benchmark scripts share: their result printed as Markdown, and written with its numbers as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(lines: list[str], record: dict[str, Any], out: Path | None) -> None:
    """Print ``lines``; with ``out``, write them there (Markdown) and ``record`` beside it as JSON."""
    print("\n".join(lines))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
