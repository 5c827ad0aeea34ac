"""repo-tagger: label every repository in a large index with at most three taxonomy tags."""

__version__ = "0.1.0"
