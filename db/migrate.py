"""Schema migrations (Alembic) and the taxonomy load that `tagger db upgrade` runs."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config

from db.engine import create_database_if_missing, get_engine, transaction, translate_errors
from db.queries import replace_taxonomy
from tagger.taxonomy import Taxonomy


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, taxonomy_file: Path) -> tuple[bool, int]:
    """Create the database if missing, migrate to head, load the taxonomy. (created, taxonomy version)"""
    created = create_database_if_missing(url)
    taxonomy = Taxonomy.load(taxonomy_file)  # fail on a bad file before touching the schema
    with translate_errors(), get_engine(url).begin() as conn:
        config = alembic_config(url)
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    with transaction(url) as conn:
        version = replace_taxonomy(conn, taxonomy, source=str(taxonomy_file))
    return created, version
