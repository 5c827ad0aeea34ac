"""Test data: the acceptance READMEs (the user's example and ones we wrote), JSON Lines files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

READMES = Path(__file__).parent / "fixtures" / "readmes"


def readme_fixture_rows() -> list[dict[str, str]]:
    """The 20 acceptance READMEs: the user's example (7462) and 19 we wrote."""
    names = json.loads((READMES / "names.json").read_text(encoding="utf-8"))
    rows = []
    for path in sorted(READMES.glob("*.md")):
        rows.append({"id": path.stem, "name": names.get(path.stem, ""), "readme": path.read_text(encoding="utf-8")})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
