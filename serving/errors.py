"""Serving errors, each with the gRPC status code it is answered with."""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base class: ``code`` is the gRPC status the client receives with ``str(self)``."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ModelNotFound(ServingError):
    """Unknown model name or version."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidInput(ServingError):
    """Wrong input name, shape, dtype, missing input, undecodable contents, oversize request."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(ServingError):
    """The model's queue is full: shed load instead of growing latency without bound."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it could be run."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ModelUnavailable(ServingError):
    """The model exists but cannot serve right now (loading, unloading, failed)."""

    code = grpc.StatusCode.UNAVAILABLE
