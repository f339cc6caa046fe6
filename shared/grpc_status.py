"""Maps the project's error hierarchy to gRPC status codes: the only place that does."""

from __future__ import annotations

import grpc

from shared.errors import NovaCronError


def status_code(error: NovaCronError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL)
