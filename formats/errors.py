"""The base error. Every error a user can act on derives from `CrawlGPTError`; its message says what
went wrong, where, and how to fix it, and the CLI prints it as one line without a traceback.

`pipeline.errors.PipelineError` (curation stages) and `train.errors.TrainError` (training) derive from
it; `FormatError` is raised by the readers of the on-disk contracts in this folder.
"""

from __future__ import annotations


class CrawlGPTError(Exception):
    """Base class for every error a user can act on."""


class FormatError(CrawlGPTError):
    """A file does not follow its on-disk contract (token shards, manifests, benchmark files)."""
