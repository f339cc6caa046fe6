"""Maps the project's error hierarchy to gRPC status codes: the only place that does."""

from __future__ import annotations

import grpc

from shared.errors import NovaCronError, error_from_code


def status_code(error: NovaCronError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL)


def error_from_rpc(error: grpc.RpcError) -> NovaCronError:
    """A client-side view of a failed call, as one of our errors."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    return error_from_code(code.name, details or code.name)
