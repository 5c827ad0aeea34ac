"""What a worker process holds for its whole life: settings, the loaded model, the taxonomy."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from db.configuration import Configuration
from db.engine import transaction
from db.runs import Run
from db.taxonomy import current_taxonomy_version, load_taxonomy
from tagger.backends import Tagger, create_tagger
from tagger.engine import TaggingEngine
from tagger.errors import ConfigError
from tagger.settings import Settings
from workers.retry import RetryPolicy

log = structlog.get_logger("tagger.worker")


@dataclass
class Runtime:
    settings: Settings
    tagger: Tagger
    engine: TaggingEngine
    taxonomy_version: int
    retry_policy: RetryPolicy
    # The runs this process has taken batches of, by id: what a batch checks of its run (its kind) never
    # changes, so it is read once per run, not once per batch (rollback is checked at write time).
    known_runs: dict[int, Run] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings, tagger: Tagger | None = None) -> Runtime:
        """Check the database, then load the model: a worker that cannot work fails here, before it
        takes any message."""
        with transaction(settings.database_url) as conn:
            version = current_taxonomy_version(conn)
            if version is None:
                raise ConfigError("no taxonomy in the database: run `tagger db upgrade` first")
            taxonomy = load_taxonomy(conn)
        tagger = tagger or create_tagger(settings)
        engine = TaggingEngine.from_settings(tagger, taxonomy, settings)
        log.info(
            "worker_model_loaded", backend=tagger.name, model=tagger.model, taxonomy_version=version,
            prompt_version=engine.prompt_version,
        )
        return cls(settings, tagger, engine, version, RetryPolicy.from_settings(settings))

    @property
    def configuration(self) -> Configuration:
        """What a result records and `tagger enqueue --stale` compares against."""
        return Configuration(self.tagger.name, self.tagger.model, self.engine.prompt_version, self.taxonomy_version)

    def close(self) -> None:
        """Release the model (worker shutdown): vLLM's engine processes stop with it."""
        self.tagger.close()
        log.info("worker_model_closed", backend=self.tagger.name, model=self.tagger.model)
