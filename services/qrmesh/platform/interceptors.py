"""Server and client interceptors shared by every service.

- `ErrorInterceptor`: validates each request against the rules in its proto,
  and maps typed domain errors (and anything unexpected) to a gRPC status with
  `google.rpc.ErrorInfo`, `BadRequest` and `RetryInfo` details. This is the one
  place where status codes are chosen.
- `DeadlineInterceptor`: puts a deadline on every outgoing call that has none.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import trace

from qrmesh.platform.auth import Guard
from qrmesh.platform.errors import ERROR_DOMAIN, InvalidArgument, QrmeshError, ResourceExhausted
from qrmesh.platform.validation import validate

log = logging.getLogger("qrmesh.rpc")

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_for(error: QrmeshError) -> status_pb2.Status:
    """The `google.rpc.Status` (with details) that reports `error`."""
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    ]
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
    if isinstance(error, ResourceExhausted) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=packed)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: QrmeshError) -> None:
    status = status_for(error)
    await context.abort(
        error.code,
        error.message,
        trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
    )


def _internal(method: str) -> QrmeshError:
    span = trace.get_current_span().get_span_context()
    trace_id = format(span.trace_id, "032x") if span.is_valid else "none"
    log.exception("unhandled error in %s", method, extra={"rpc_method": method})
    error = QrmeshError(f"internal error (trace {trace_id}); it has been logged", reason="INTERNAL")
    error.code = grpc.StatusCode.INTERNAL
    return error


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Authorize and validate requests, and turn exceptions into rich gRPC statuses."""

    def __init__(self, guard: Guard | None = None) -> None:
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap(handler, handler_call_details.method, self.guard)


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, guard: Guard | None
) -> grpc.RpcMethodHandler[Any, Any]:
    def as_error(exc: BaseException) -> QrmeshError:
        if isinstance(exc, QrmeshError):
            return exc
        return _internal(method)

    async def admit(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The caller may send this request, and it is well formed."""
        if guard is not None and guard.guards(method):
            await guard.check(method, request, context)
        validate(request)

    async def validated(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            await admit(request, context)
            yield request

    if handler.unary_unary is not None:
        inner_uu: Any = handler.unary_unary  # an async callable under grpc.aio

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                await admit(request, context)
                return await inner_uu(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error leaves as a status
                await _abort(context, as_error(exc))

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )

    if handler.unary_stream is not None:
        inner_us: Any = handler.unary_stream  # an async callable under grpc.aio

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                await admit(request, context)
                if inspect.isasyncgenfunction(inner_us):
                    async for item in inner_us(request, context):
                        yield item
                else:
                    await inner_us(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                await _abort(context, as_error(exc))

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )

    if handler.stream_unary is not None:
        inner_su: Any = handler.stream_unary  # an async callable under grpc.aio

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await inner_su(validated(requests, context), context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                await _abort(context, as_error(exc))

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )

    if handler.stream_stream is not None:
        inner_ss: Any = handler.stream_stream  # an async callable under grpc.aio

        async def stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                if inspect.isasyncgenfunction(inner_ss):
                    async for item in inner_ss(validated(requests, context), context):
                        yield item
                else:
                    await inner_ss(validated(requests, context), context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                await _abort(context, as_error(exc))

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler


class DeadlineInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Give every outgoing call a deadline: `default` seconds unless it set its own."""

    def __init__(self, default: float) -> None:
        self.default = default

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=self.default,
            metadata=details.metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` a server sent with `error`, if it sent one."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


__all__ = [
    "DeadlineInterceptor",
    "ErrorInterceptor",
    "rich_status",
    "status_for",
]
