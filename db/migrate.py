"""Schema migrations (Alembic) and the taxonomy load that `tagger db upgrade` runs."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config

from db.engine import create_database_if_missing, get_engine, translate_errors
from db.locks import advisory_xact_lock
from db.taxonomy import replace_taxonomy
from tagger.taxonomy import Taxonomy

UPGRADE_LOCK = 0x7461_6767_6572_0003  # PostgreSQL advisory lock key of `tagger db upgrade`


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, taxonomy_file: Path) -> tuple[bool, int]:
    """Create the database if missing, migrate to head, load the taxonomy. (created, taxonomy version)"""
    taxonomy = Taxonomy.load(taxonomy_file)  # fail on a bad file before touching anything
    created = create_database_if_missing(url)
    # One transaction under one lock: a second `tagger db upgrade` at the same time waits, then finds the
    # schema at head and the taxonomy loaded (instead of both creating the same tables).
    with translate_errors(), get_engine(url).begin() as conn:
        advisory_xact_lock(conn, UPGRADE_LOCK)
        config = alembic_config(url)
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        version = replace_taxonomy(conn, taxonomy, source=str(taxonomy_file))
    return created, version
