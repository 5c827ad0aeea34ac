"""The answer's JSON schema, and validation of every answer: never trust the model."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from tagger.errors import MalformedOutput
from tagger.taxonomy import Tag, Taxonomy

MAX_TAGS = 3


@lru_cache(maxsize=256)
def _schema_json(choices: tuple[str, ...]) -> str:
    schema = {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "enum": list(choices)},
                "minItems": 1,
                "maxItems": MAX_TAGS,
            }
        },
        "required": ["tags"],
        "additionalProperties": False,
    }
    return json.dumps(schema, separators=(",", ":"))


def answer_schema(choices: Sequence[str]) -> dict[str, Any]:
    """JSON schema of an answer: ``{"tags": [...]}`` with 1 to 3 names from ``choices``."""
    result: dict[str, Any] = json.loads(_schema_json(tuple(choices)))
    return result


def answer_schema_json(choices: Sequence[str]) -> str:
    return _schema_json(tuple(choices))


_OBJECT = re.compile(r"\{.*\}", re.S)
_ARRAY = re.compile(r"\[.*\]", re.S)


def _repair(raw: str) -> Any:
    """One repair attempt for answers from servers that ignore the schema: fenced, chatty or cut off."""
    text = raw.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    for pattern in (_OBJECT, _ARRAY):
        match = pattern.search(text)
        if match:
            try:
                return json.loads(match.group(0))
            except json.JSONDecodeError:
                pass
    # Cut off by the token limit: close the open string, array and object.
    for suffix in ('"]}', "]}", "}"):
        try:
            return json.loads(text + suffix)
        except json.JSONDecodeError:
            continue
    raise MalformedOutput(f"not JSON: {raw[:200]!r}")


def parse_answer(raw: str, taxonomy: Taxonomy) -> list[Tag]:
    """The valid tags in ``raw``: unknown names dropped, duplicates removed, at most three kept."""
    try:
        data: Any = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        data = _repair(raw or "")
    items = data.get("tags") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise MalformedOutput(f"no 'tags' array in answer: {raw[:200]!r}")
    tags: list[Tag] = []
    for item in items:
        name = item.get("name") if isinstance(item, dict) else item
        tag = taxonomy.by_name(name) if isinstance(name, str) else None
        if tag is not None and tag not in tags:
            tags.append(tag)
        if len(tags) == MAX_TAGS:
            break
    return tags
