"""A backend for fault tests: the keyword tagger, except on READMEs that carry a fault marker.

Load it in a worker with ``TAGGER_BACKEND=tests.support.faulty_backend:factory``. A README containing
``TAGGER-FAULT:<ErrorClass>`` (a class of :mod:`tagger.errors`) gets that error in its place, and
``TAGGER-FAULT:garbage`` gets an answer that is not JSON (MalformedOutput after the repair attempt).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from tagger import errors
from tagger.backends import Generation
from tagger.backends.keyword import KeywordTagger
from tagger.prompt import Prompt
from tagger.settings import Settings

MARKER = re.compile(r"TAGGER-FAULT:(\w+)")


def fault_marker(error: str) -> str:
    return f"TAGGER-FAULT:{error}"


class FaultyTagger(KeywordTagger):
    name = "faulty"
    model = "faulty-v1"

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        answers = super().generate(prompts)
        for position, prompt in enumerate(prompts):
            match = MARKER.search(prompt.readme)
            if match is None:
                continue
            kind = match.group(1)
            if kind == "garbage":
                answers[position] = Generation("I would say this repository is about many things.")
            else:
                error_class = getattr(errors, kind)
                answers[position] = error_class(f"injected {kind} for this README")
        return answers


def factory(settings: Settings) -> FaultyTagger:
    return FaultyTagger()


class SlowTagger(KeywordTagger):
    """The keyword tagger at a model's pace (a fixed time per batch): a run lasts long enough for a test
    to stop a worker in the middle of it, whatever the machine's speed."""

    name = "keyword"  # results look like the keyword backend's
    seconds_per_batch = 0.05

    def generate(self, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
        time.sleep(self.seconds_per_batch)
        return super().generate(prompts)


def slow_factory(settings: Settings) -> SlowTagger:
    return SlowTagger()
