"""The one exception hierarchy of repo-tagger.

Driver errors (psycopg, redis, llama.cpp, HTTP) are translated into these at the boundary, so the
retry policy in :mod:`workers.retry` reasons about *what kind* of failure happened, never about
which library raised it.
"""

from __future__ import annotations


class TaggerError(Exception):
    """Base class of every error this product raises on purpose."""


class ConfigError(TaggerError):
    """Settings or input files that cannot work (bad URL, unknown backend, malformed taxonomy)."""


class InputError(TaggerError):
    """Bad input from a user: a malformed line, an id that cannot be an id."""


class TaxonomyError(ConfigError):
    """A taxonomy file with duplicate ids or names, or entries that are not tags."""


# --- failures while tagging: the retry policy sorts on these ---------------------------------


class TransientError(TaggerError):
    """Worth retrying: the same work may succeed later."""


class DatabaseUnavailable(TransientError):
    """PostgreSQL refused, dropped or timed out a connection."""


class BrokerUnavailable(TransientError):
    """Redis could not be reached."""


class BackendTimeout(TransientError):
    """The model did not answer within the backend timeout."""


class BackendOutOfMemory(TransientError):
    """The model ran out of memory on this batch; the batch is retried in halves."""


class BackendUnavailable(TransientError):
    """An inference server could not be reached or answered with a server error."""


class MalformedOutput(TaggerError):
    """The model's answer is not JSON of the schema, even after one repair attempt."""


class PermanentError(TaggerError):
    """Retrying cannot help: the repo goes to the dead-letter table at once."""


class RepoNotFound(PermanentError):
    """The repo id is not in the index."""


class PromptTooLong(PermanentError):
    """The prompt and the answer do not fit the model's context window."""


class UnusableReadme(PermanentError):
    """The README is empty, or nothing is left of it after cleaning."""
