"""One error hierarchy for the whole project; `shared.grpc_status` maps it to gRPC codes."""

from __future__ import annotations


class NovaCronError(Exception):
    """Base error. `code` is a gRPC status code name so that agent results can carry it."""

    code = "INTERNAL"


class InvalidArgument(NovaCronError):
    code = "INVALID_ARGUMENT"


class NotFound(NovaCronError):
    code = "NOT_FOUND"


class AlreadyExists(NovaCronError):
    code = "ALREADY_EXISTS"


class ResourceExhausted(NovaCronError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(NovaCronError):
    code = "FAILED_PRECONDITION"


class Unavailable(NovaCronError):
    code = "UNAVAILABLE"


class DeadlineExceeded(NovaCronError):
    code = "DEADLINE_EXCEEDED"


class Internal(NovaCronError):
    code = "INTERNAL"


class PermissionDenied(NovaCronError):
    """The caller is known, and not allowed this (its role, or the identity it claims)."""

    code = "PERMISSION_DENIED"


class Unauthenticated(NovaCronError):
    """The caller presented no credential this controller accepts."""

    code = "UNAUTHENTICATED"


class ConfigError(InvalidArgument):
    """A configuration file or flag is invalid; the message names the bad key."""


_BY_CODE: dict[str, type[NovaCronError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        ResourceExhausted,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        Internal,
        PermissionDenied,
        Unauthenticated,
    )
}


def error_from_code(code: str, message: str) -> NovaCronError:
    """Rebuild an error that crossed the wire as (code, message)."""
    return _BY_CODE.get(code, Internal)(message)
