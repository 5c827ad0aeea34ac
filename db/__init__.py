"""Storage: the schema (models.py), connections (engine.py) and every SQL operation (queries.py)."""
