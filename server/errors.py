"""Typed errors shared by the engines and the service layer.

Each names the offending parameter; `server/api/errors.py` maps them to HTTP status and OpenAI
error JSON in one place. Nothing below the service layer knows about HTTP.
"""

from __future__ import annotations


class LLMDoctorError(Exception):
    """Base class. `param` names the request field at fault, when there is one."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self):
        # Ray carries an error raised in a replica back to the gateway by pickling it; the default
        # (the class called with `args` alone) would lose `param` and subclasses' own fields.
        return _restore, (type(self), self.message, dict(self.__dict__))


def _restore(cls: type[LLMDoctorError], message: str, state: dict) -> LLMDoctorError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidRequestError(LLMDoctorError):
    """The request is malformed or out of range (HTTP 400)."""

    status = 400
    type = "invalid_request_error"


class ContextOverflowError(InvalidRequestError):
    """Prompt plus max_tokens exceed the model's context (HTTP 400)."""


class NotFoundError(LLMDoctorError):
    """An unknown model, doctor or adapter name (HTTP 404)."""

    status = 404
    type = "not_found_error"


class ConflictError(LLMDoctorError):
    """A name already in use (HTTP 409)."""

    status = 409
    type = "conflict_error"


class AdapterError(InvalidRequestError):
    """An adapter folder that cannot be loaded: wrong base, kind, rank, files (HTTP 400)."""


class ForbiddenError(LLMDoctorError):
    """A path outside the configured adapter roots (HTTP 403)."""

    status = 403
    type = "permission_error"


class QueueFullError(LLMDoctorError):
    """The waiting queue is at --max-queue (HTTP 503 with Retry-After)."""

    status = 503
    type = "server_overloaded"

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class EngineDeadError(LLMDoctorError):
    """The engine loop crashed or is shutting down (HTTP 503)."""

    status = 503
    type = "service_unavailable"
