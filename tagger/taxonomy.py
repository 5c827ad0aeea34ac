"""The fixed tag taxonomy: ids are kept exactly as given, names are normalised (stripped)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagger.errors import TaxonomyError

DEFAULT_TAXONOMY = Path(__file__).parent / "data" / "tags.json"
DEFAULT_DESCRIPTIONS = Path(__file__).parent / "data" / "tag_descriptions.json"


@dataclass(frozen=True, slots=True)
class Tag:
    id: int
    name: str
    description: str = ""


def normalise_name(name: str) -> str:
    return " ".join(name.split()).lower()


@dataclass(frozen=True)
class Taxonomy:
    tags: tuple[Tag, ...]
    _by_name: Mapping[str, Tag] = field(repr=False, compare=False, default_factory=dict)
    _by_id: Mapping[int, Tag] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_entries(cls, entries: Iterable[Mapping[str, Any]]) -> Taxonomy:
        tags: list[Tag] = []
        by_name: dict[str, Tag] = {}
        by_id: dict[int, Tag] = {}
        for position, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "id" not in entry or "name" not in entry:
                raise TaxonomyError(f"entry {position}: expected an object with 'id' and 'name', got {entry!r}")
            raw_id, raw_name = entry["id"], entry["name"]
            if isinstance(raw_id, bool) or not isinstance(raw_id, int) or raw_id < 0:
                raise TaxonomyError(f"entry {position}: id must be a non-negative integer, got {raw_id!r}")
            if not isinstance(raw_name, str) or not normalise_name(raw_name):
                raise TaxonomyError(f"entry {position}: name must be a non-empty string, got {raw_name!r}")
            tag = Tag(raw_id, normalise_name(raw_name), str(entry.get("description") or "").strip())
            if tag.id in by_id:
                raise TaxonomyError(f"duplicate tag id {tag.id} ({by_id[tag.id].name!r} and {tag.name!r})")
            if tag.name in by_name:
                raise TaxonomyError(f"duplicate tag name {tag.name!r} (ids {by_name[tag.name].id} and {tag.id})")
            tags.append(tag)
            by_name[tag.name] = tag
            by_id[tag.id] = tag
        if not tags:
            raise TaxonomyError("the taxonomy has no tags")
        return cls(tuple(sorted(tags, key=lambda t: t.name)), by_name, by_id)

    @classmethod
    def load(cls, path: Path | str = DEFAULT_TAXONOMY, descriptions: Path | str | None = None) -> Taxonomy:
        """Read a taxonomy file; descriptions (``{"id": "text"}``) are merged in when given or shipped."""
        try:
            entries = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TaxonomyError(f"cannot read taxonomy {path}: {exc}") from exc
        if not isinstance(entries, list):
            raise TaxonomyError(f"{path}: expected a JSON array of {{id, name}} objects")
        if descriptions is None and Path(path) == DEFAULT_TAXONOMY and DEFAULT_DESCRIPTIONS.exists():
            descriptions = DEFAULT_DESCRIPTIONS
        if descriptions is not None:
            texts = json.loads(Path(descriptions).read_text(encoding="utf-8"))
            entries = [
                {**e, "description": e.get("description") or texts.get(str(e.get("id")), "")}
                if isinstance(e, dict)
                else e
                for e in entries
            ]
        return cls.from_entries(entries)

    def __len__(self) -> int:
        return len(self.tags)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tags]

    def by_name(self, name: str) -> Tag | None:
        return self._by_name.get(normalise_name(name))

    def by_id(self, tag_id: int) -> Tag | None:
        return self._by_id.get(tag_id)

    @property
    def version_hash(self) -> str:
        """Identifies the taxonomy's content: same ids and names, same hash."""
        canonical = json.dumps(sorted((t.id, t.name) for t in self.tags), separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
