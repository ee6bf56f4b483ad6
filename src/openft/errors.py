"""Domain errors. Services raise these; `api/errors.py` maps each class to an HTTP status in one table.

Each error carries what the OpenAI error envelope needs (`message`, `param`, `code`) and nothing
about HTTP, so the same errors serve the CLI and the worker.
"""

from __future__ import annotations


class OpenFTError(Exception):
    """Something went wrong."""

    code: str | None = None

    def __init__(self, message: str | None = None, *, param: str | None = None, code: str | None = None):
        self.message = message or (self.__doc__ or "error").strip()
        self.param = param
        if code is not None:
            self.code = code
        super().__init__(self.message)


class InvalidRequest(OpenFTError):
    """The request is not valid."""

    code = "invalid_request"


class NotFound(OpenFTError):
    """No such object."""

    code = "not_found"


class ModelNotFound(NotFound):
    """The model does not exist or you do not have access to it."""

    code = "model_not_found"


class InvalidJobState(OpenFTError):
    """The operation is not allowed in the job's current status."""

    code = "invalid_job_state"


class Unauthorized(OpenFTError):
    """Incorrect or missing API key."""

    code = "invalid_api_key"


class PermissionDenied(OpenFTError):
    """You are not allowed to do this."""

    code = "permission_denied"


class RateLimited(OpenFTError):
    """Rate limit reached for requests; retry after the time given in `Retry-After`."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str | None = None, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds until the caller's next request would be admitted."""


class QuotaExceeded(OpenFTError):
    """The organization is at one of its limits (`openft orgs set-limits`); waiting does not lift it by itself:
    a job has to finish or a file be deleted, so no `Retry-After` is sent."""

    code = "quota_exceeded"


class PayloadTooLarge(OpenFTError):
    """The upload is larger than the server accepts."""

    code = "file_too_large"


class ContextLengthExceeded(InvalidRequest):
    """The prompt is longer than the model's context."""

    code = "context_length_exceeded"


class ServiceUnavailable(OpenFTError):
    """The service cannot answer right now; try again (after `retry_after` seconds, when it is known)."""

    code = "service_unavailable"

    def __init__(self, message: str | None = None, *, param: str | None = None, retry_after: float | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after
