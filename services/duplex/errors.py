"""One error hierarchy for the services.

Boundaries (RPC handlers, session loops) catch `DuplexError` and map it: `grpc_code` becomes the
gRPC status, `code` the WebSocket `error` event's code. `retryable` tells a caller whether the
same request may succeed later (another worker, after a load finishes).
"""

from __future__ import annotations

import grpc


class DuplexError(Exception):
    code = "internal"
    grpc_code = grpc.StatusCode.INTERNAL
    retryable = False


class InvalidInput(DuplexError):
    code = "invalid_argument"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownModel(DuplexError):
    code = "unknown_model"
    grpc_code = grpc.StatusCode.NOT_FOUND


class UnknownFamily(DuplexError):
    code = "unknown_family"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownSession(DuplexError):
    code = "unknown_session"
    grpc_code = grpc.StatusCode.NOT_FOUND


class SessionExists(DuplexError):
    code = "session_exists"
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class AtCapacity(DuplexError):
    code = "at_capacity"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class ModelLoading(DuplexError):
    code = "model_loading"
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class ModelInUse(DuplexError):
    code = "model_in_use"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    retryable = True


class ModelLoadFailed(DuplexError):
    code = "model_load_failed"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class MissingDependency(ModelLoadFailed):
    """A model family's extra is not installed; the message names the pip command."""

    code = "missing_dependency"


class SynthesisFailed(DuplexError):
    code = "synthesis_failed"
    grpc_code = grpc.StatusCode.INTERNAL
    retryable = True
