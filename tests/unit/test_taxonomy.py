import json

import pytest

from tagger.errors import TaxonomyError
from tagger.taxonomy import Taxonomy


def test_shipped_taxonomy_keeps_ids_and_strips_names():
    taxonomy = Taxonomy.load()
    assert len(taxonomy) == 90
    ids = {t.id for t in taxonomy.tags}
    assert 19 not in ids and 67 not in ids
    assert taxonomy.by_id(17).name == "ai"
    assert taxonomy.by_id(8).name == "declarative-gui"
    assert taxonomy.by_id(81).name == "game-engine"
    assert taxonomy.by_name("declarative-gui ").id == 8
    assert taxonomy.by_name("Game-Engine").id == 81
    assert all(name == name.strip() for name in taxonomy.names)


def test_duplicate_ids_or_names_are_rejected(tmp_path):
    path = tmp_path / "tags.json"
    path.write_text(json.dumps([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]))
    with pytest.raises(TaxonomyError, match="duplicate tag id 1"):
        Taxonomy.load(path)
    path.write_text(json.dumps([{"id": 1, "name": "a "}, {"id": 2, "name": "A"}]))
    with pytest.raises(TaxonomyError, match="duplicate tag name 'a'"):
        Taxonomy.load(path)


@pytest.mark.parametrize("content", ['{"id": 1}', "[1, 2]", '[{"id": "x", "name": "a"}]', '[{"id": 1, "name": " "}]',
                                     "not json", "[]"])
def test_malformed_taxonomy_files_are_rejected_clearly(tmp_path, content):
    path = tmp_path / "tags.json"
    path.write_text(content)
    with pytest.raises(TaxonomyError):
        Taxonomy.load(path)


def test_version_hash_follows_content_not_order():
    a = Taxonomy.from_entries([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    b = Taxonomy.from_entries([{"id": 2, "name": "b"}, {"id": 1, "name": "a "}])
    c = Taxonomy.from_entries([{"id": 1, "name": "a"}, {"id": 3, "name": "b"}])
    assert a.version_hash == b.version_hash != c.version_hash
