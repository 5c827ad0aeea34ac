"""The READMEs the package ships: the user's own example (repo 7462) and a few we wrote. The demo tags
them; benchmarks fall back on them."""

from __future__ import annotations

import json
from importlib.resources import files


def sample_rows() -> list[dict[str, str]]:
    """Import rows ({"id", "name", "readme"}) of the shipped samples, in id order."""
    samples = files("tagger") / "data" / "samples"
    names: dict[str, str] = json.loads((samples / "names.json").read_text(encoding="utf-8"))
    return [
        {"id": repo_id, "name": name, "readme": (samples / f"{repo_id}.md").read_text(encoding="utf-8")}
        for repo_id, name in sorted(names.items())
    ]
