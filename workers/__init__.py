"""Celery workers: the app (app.py), the task (tasks.py), the per-process model (runtime.py) and the
retry-or-dead-letter decision (retry.py)."""
