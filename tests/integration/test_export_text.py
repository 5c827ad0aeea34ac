"""`tagger export` writes each line as text it concatenates and streams by COPY: held here, byte for byte,
to jsonb's own rendering of the same result (the export's format before it was text), on the cases
that escaping, key order, lookups and COPY could get wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from db.engine import transaction
from tests.support.processes import run_cli

# Tags the shipped taxonomy lacks: names to escape, ids at the ends of the range. 19 is not in it.
TAGS = {-7: 'say "hi"', 1001: "back\\slash", 1002: "ünïcødé ✓ 日本", 1003: "tab\there\nnewline\x01",
        2_000_000_000: "emoji 😀 and \u2028 separator"}
MISSING = 19
IDS = ['quo"te', "back\\slash\\", "ünï/日本", "emoji😀", "ctl\t\x01\x1f", "sep\u2028arator", "a'b", "plain"]

# The result's (tag ids, scores, backend, stale) per repo, in IDS' order.
RESULTS = [
    ([-7, 1001], [0.1993, 0.4], "keyword", False),
    ([1002], None, "keyword", True),  # stale, no scores: "score": null
    ([1003, MISSING, 2_000_000_000], [0.00001, 0.5, 1.0], "keyword", False),  # a deleted tag left out
    ([], None, "keyword", True),
    ([1, 2], [0.9], "manual", True),  # pinned: "source", never "stale"; one score short
    ([MISSING], [0.3], "keyword", False),  # every tag deleted: "tags": []
    ([1, 1001, -7, 2, MISSING], [0.1, 0.2, 0.3, 0.4, 0.5], "keyword", False),  # more than are looked up
    ([2_000_000_000, 1, -7], [float("nan"), 0.0, 0.125], "keyword", False),
]


def jsonb_lines(conn: sa.Connection, with_scores: bool, where: str = "") -> list[str]:
    """Each result as jsonb renders it: a jsonb value built per row, then cast to text."""
    tag = "(SELECT jsonb_build_object('id', t.id, 'name', t.name) FROM tags t WHERE t.id = u.id)"
    if with_scores:
        tag = f"({tag} || jsonb_build_object('score', to_jsonb(r.tag_scores[u.n])))"
    tags = (f"coalesce((SELECT jsonb_agg({tag} ORDER BY u.n) FROM unnest(r.tag_ids) WITH ORDINALITY AS u(id, n) "
            "WHERE EXISTS (SELECT FROM tags t WHERE t.id = u.id)), '[]')")
    return list(conn.execute(sa.text(f"""
        SELECT CAST(jsonb_build_object('id', r.repo_id, 'tags', {tags})
               || CASE WHEN r.backend = 'manual' THEN jsonb_build_object('source', 'manual')
                       WHEN r.readme_hash <> p.readme_hash THEN jsonb_build_object('stale', true)
                       ELSE '{{}}' END AS text)
        FROM results r JOIN repos p ON p.id = r.repo_id {where} ORDER BY r.repo_id""")).scalars())


@pytest.fixture
def hard_results(database_url: str) -> str:
    with transaction(database_url) as conn:
        conn.execute(sa.text("INSERT INTO tags (id, name) VALUES (:id, :name)"),
                     [{"id": i, "name": name} for i, name in TAGS.items()])
        conn.execute(sa.text("INSERT INTO repos (id, readme, readme_hash) VALUES (:id, 'x', 'h')"),
                     [{"id": i} for i in IDS])
        conn.execute(sa.text(
            "INSERT INTO results (repo_id, tag_ids, tag_scores, backend, model, prompt_version, taxonomy_version, "
            "readme_hash, readme_version, raw_output, latency_ms) VALUES (:id, :tags, :scores, :backend, 'm', 'p', "
            "1, :hash, 1, '', 0)"),
            [{"id": i, "tags": tags, "scores": scores, "backend": backend, "hash": "old" if stale else "h"}
             for i, (tags, scores, backend, stale) in zip(IDS, RESULTS, strict=True)])
        assert conn.execute(sa.text("SELECT count(*) FROM tags WHERE id = :id"), {"id": MISSING}).scalar() == 0
    return database_url


@pytest.mark.parametrize("with_scores", [False, True], ids=["tags", "with-scores"])
def test_export_lines_are_jsonbs_text_byte_for_byte(hard_results, env, tmp_path, with_scores):
    with transaction(hard_results) as conn:
        expected = "".join(line + "\n" for line in jsonb_lines(conn, with_scores))
    flags = ["--with-scores"] if with_scores else []
    out = tmp_path / "export.jsonl"
    printed = run_cli(env, "export", *flags, "--out", str(out))
    assert out.read_bytes() == expected.encode()
    assert run_cli(env, "export", *flags).stdout == expected
    assert f"exported {len(IDS)} repos" in printed.stderr and "note: 2 repos exported with" in printed.stderr
    lines = {json.loads(line)["id"]: json.loads(line) for line in expected.split("\n") if line}
    tag = {"id": 1002, "name": TAGS[1002]} | ({"score": None} if with_scores else {})
    assert lines["back\\slash\\"] == {"id": "back\\slash\\", "tags": [tag], "stale": True}
    assert [t["id"] for t in lines["ünï/日本"]["tags"]] == [1003, 2_000_000_000]
    assert [t["id"] for t in lines["a'b"]["tags"]] == [1, 1001, -7, 2]
    assert lines[IDS[4]]["source"] == "manual" and "stale" not in lines[IDS[4]]


def test_changed_since_lines_are_the_same_text(hard_results, env):
    since = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    with transaction(hard_results) as conn:
        conn.execute(sa.text("UPDATE results SET changed_at = now() - interval '1 hour' WHERE repo_id <> 'a''b'"))
        expected = jsonb_lines(conn, True, "WHERE r.repo_id = 'a''b'")
    assert run_cli(env, "export", "--with-scores", "--changed-since", since).stdout == expected[0] + "\n"
