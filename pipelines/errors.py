"""Errors a step raises on purpose. Each names the problem in words a user can act on.

``retryable = False`` marks errors that a retry cannot fix (bad data, bad
config): the orchestrator fails the task at once instead of retrying it.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class for errors that carry a clear, user-facing message."""

    retryable = True


class ConfigError(PipelineError):
    """The pipeline config or a run parameter is invalid."""

    retryable = False


class DataError(PipelineError):
    """The data cannot be used: missing columns, no rows, unreadable file."""

    retryable = False


class ValidationFailed(DataError):
    """The expectation suite failed; ``failures`` lists each failed expectation."""

    def __init__(self, message: str, failures: list[dict], report_uri: str | None = None):
        super().__init__(message)
        self.failures = failures
        self.report_uri = report_uri


class UntrustedModel(PipelineError):
    """A model artifact in another format than skops, or holding types the project does not trust."""

    retryable = False


class InfraValidationFailed(PipelineError):
    """The candidate could not be served: it did not load, answer correctly, or fast enough."""

    retryable = False
