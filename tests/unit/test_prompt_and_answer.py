import json

import pytest

from tagger.answer import answer_schema, parse_answer
from tagger.errors import MalformedOutput
from tagger.prompt import PromptBuilder
from tagger.taxonomy import Taxonomy

TAXONOMY = Taxonomy.load()


def test_fixed_part_is_byte_identical_and_readme_comes_last():
    builder = PromptBuilder(TAXONOMY)
    a = builder.build("A Rust CLI for searching logs.")
    b = builder.build("模型推理框架")
    assert a.system.encode() == b.system.encode()
    assert all(f"- {name}" in a.system for name in TAXONOMY.names)
    assert "README" not in a.system.split("Tags:")[1]
    assert a.user.endswith("A Rust CLI for searching logs.")
    assert b.user.endswith("模型推理框架")


def test_schema_allows_only_taxonomy_names_and_at_most_three():
    schema = answer_schema(TAXONOMY.names)
    tags = schema["properties"]["tags"]
    assert tags["maxItems"] == 3
    assert sorted(tags["items"]["enum"]) == sorted(TAXONOMY.names)
    assert schema["required"] == ["tags"]


def test_validation_drops_unknown_duplicates_and_extras():
    raw = json.dumps({"tags": ["ai", "pwned", "AI", "cli", "database", "api"]})
    assert [t.name for t in parse_answer(raw, TAXONOMY)] == ["ai", "cli", "database"]
    assert parse_answer('{"tags": []}', TAXONOMY) == []
    assert [t.id for t in parse_answer('{"tags": ["declarative-gui "]}', TAXONOMY)] == [8]


def test_one_repair_attempt_for_chatty_or_cut_off_answers():
    assert [t.name for t in parse_answer('Sure! ```json\n{"tags": ["cli"]}\n```', TAXONOMY)] == ["cli"]
    assert [t.name for t in parse_answer('{"tags": ["cli", "ai"', TAXONOMY)] == ["cli", "ai"]
    assert [t.name for t in parse_answer('["api"]', TAXONOMY)] == ["api"]


@pytest.mark.parametrize("raw", ["", "no json here", '{"labels": ["cli"]}', '{"tags": "cli"}'])
def test_unusable_answers_raise_malformed_output(raw):
    with pytest.raises(MalformedOutput):
        parse_answer(raw, TAXONOMY)
