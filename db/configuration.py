"""What computed a result: the configuration a worker runs, a run records and "stale" compares to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Configuration:
    backend: str
    model: str
    prompt_version: str
    taxonomy_version: int | None  # None: no taxonomy loaded yet (a run cannot start)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Configuration:
        return cls(**{name: row[name] for name in CONFIGURATION_FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: Configuration) -> list[tuple[str, Any, Any]]:
        """(field, this value, the other's) for every field that differs."""
        return [(name, getattr(self, name), getattr(other, name)) for name in CONFIGURATION_FIELDS
                if getattr(self, name) != getattr(other, name)]


CONFIGURATION_FIELDS = tuple(f.name for f in fields(Configuration))
