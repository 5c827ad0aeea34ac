"""Alembic migrations; a package so that installed copies of repo-tagger can find them."""
