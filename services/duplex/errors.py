"""One error hierarchy for the services.

Boundaries (RPC handlers, session loops) catch `DuplexError` and map it: `grpc_code` becomes the
gRPC status, `code` the WebSocket `error` event's code. `retryable` tells a caller whether the
same request may succeed later (another worker, after a load finishes).

The codes a conversation's client can see (the README lists them): invalid_argument, busy,
unknown_model, worker_unavailable, model_load_failed, synthesis_failed, responder_failed,
internal. Each comes with a message written for a person.
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
    """No room: a worker at its session limit, or no worker with room for a new conversation."""

    code = "busy"
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


class ModelNotPlaced(ModelLoadFailed):
    """Kubernetes mode: the model is not in this worker Pod's model set (the operator places)."""

    code = "model_not_placed"


class MissingDependency(ModelLoadFailed):
    """A model family's extra is not installed; the message names the pip command."""

    code = "missing_dependency"


class SynthesisFailed(DuplexError):
    code = "synthesis_failed"
    grpc_code = grpc.StatusCode.INTERNAL
    retryable = True


class NotAllowed(DuplexError):
    """The caller lacks the identity the call needs (an admin RPC without an admin)."""

    code = "forbidden"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class WorkerUnavailable(DuplexError):
    """A worker could not be reached, or failed while speaking, and no other could take over."""

    code = "worker_unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


def from_status(code: grpc.StatusCode, details: str) -> DuplexError:
    """A worker's gRPC status as our error, keeping the worker's own message."""
    details = details or code.name
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return AtCapacity(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return UnknownModel(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return ModelLoadFailed(details)
    if code == grpc.StatusCode.INTERNAL:
        return SynthesisFailed(details)
    return WorkerUnavailable(f"the TTS worker is unavailable ({code.name}: {details})")


def first_error(group: BaseExceptionGroup[BaseException]) -> DuplexError | None:
    """The first of our errors inside a task group's exception group, however deeply nested."""
    for exc in group.exceptions:
        if isinstance(exc, DuplexError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (inner := first_error(exc)):
            return inner
    return None
