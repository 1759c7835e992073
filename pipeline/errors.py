"""Typed errors. Each message says what went wrong, where, and how to fix it."""

from __future__ import annotations

from formats.errors import CrawlGPTError


class PipelineError(CrawlGPTError):
    """Base class for every error a user can act on."""


class ConfigError(PipelineError, ValueError):
    """An option has an invalid value; the message names the option."""

    def __init__(self, option: str, message: str):
        super().__init__(f"invalid {option}: {message}")
        self.option = option


class StageConfigChanged(PipelineError):
    """A stage folder holds output made with another config or other inputs."""


class InputError(PipelineError):
    """An input file or model cannot be used at all (continuing would be wrong)."""


class AccountingError(PipelineError):
    """Documents in != kept + dropped + unreadable: a bug, never silently ignored."""
