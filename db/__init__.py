"""Storage (PostgreSQL): the schema (models.py), connections (engine.py), migrations (migrate.py), and
the SQL by area, one function per operation, rows out as frozen dataclasses: repos, taxonomy, results
(live results and the statements built from the one declaration of a result), history (versions,
rollback), pins, runs, jobs (live job state), dead_letters, canary (shadow results), work (live or
canary work: attempts, one write path, one sweeper), locks, configuration."""
