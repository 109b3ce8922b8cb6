"""Server and client interceptors shared by every service.

- `ErrorInterceptor`: authorizes each call (the `Guard`), charges it to its
  caller's rate limit (the `RateLimiter`), validates each request against the
  rules in its proto, and maps typed domain errors (and anything unexpected) to
  a gRPC status with `google.rpc.ErrorInfo`, `BadRequest` and `RetryInfo`
  details (and a `retry-after` header when there is a delay to wait). This is
  the one place where status codes are chosen.
- `DeadlineInterceptor`: puts a deadline on every outgoing call that has none.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import trace

from qrmesh.platform.auth import Guard
from qrmesh.platform.errors import ERROR_DOMAIN, InvalidArgument, QrmeshError, ResourceExhausted, Unauthenticated
from qrmesh.platform.ratelimit import RETRY_AFTER_HEADER, RateLimited, RateLimiter
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
    trailing: list[tuple[str, str | bytes]] = [(STATUS_DETAILS_KEY, status.SerializeToString())]
    if isinstance(error, RateLimited):
        trailing.extend(error.headers)
    elif isinstance(error, ResourceExhausted) and error.retry_after is not None:
        trailing.append((RETRY_AFTER_HEADER, str(max(1, math.ceil(error.retry_after)))))
    await context.abort(error.code, error.message, trailing_metadata=tuple(trailing))


def _internal(method: str) -> QrmeshError:
    span = trace.get_current_span().get_span_context()
    trace_id = format(span.trace_id, "032x") if span.is_valid else "none"
    log.exception("unhandled error in %s", method, extra={"rpc_method": method})
    error = QrmeshError(f"internal error (trace {trace_id}); it has been logged", reason="INTERNAL")
    error.code = grpc.StatusCode.INTERNAL
    return error


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Authorize and validate requests, and turn exceptions into rich gRPC statuses."""

    def __init__(self, guard: Guard | None = None, limiter: RateLimiter | None = None) -> None:
        self.guard = guard
        self.limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        limiter = self.limiter if self.guard is not None and self.guard.guards(handler_call_details.method) else None
        return _wrap(handler, handler_call_details.method, self.guard, limiter)


class _Reply:
    """The servicer's view of the call's context: the first headers it sends (or, if it sends none, the
    ones sent before the first response) also carry the rate limit headers of the call."""

    __slots__ = ("_context", "charged", "headers", "sent")

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context
        self.charged = False
        self.headers: tuple[tuple[str, str], ...] = ()
        self.sent = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.sent = True
        await self._context.send_initial_metadata((*tuple(metadata), *self.headers))

    async def flush(self) -> None:
        """Send the rate limit headers unless headers went out already."""
        if self.sent or not self.headers:
            return
        self.sent = True
        with contextlib.suppress(grpc.aio.UsageError):  # the call ended meanwhile
            await self._context.send_initial_metadata(self.headers)


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, guard: Guard | None, limiter: RateLimiter | None = None
) -> grpc.RpcMethodHandler[Any, Any]:
    def as_error(exc: BaseException) -> QrmeshError:
        if isinstance(exc, QrmeshError):
            return exc
        return _internal(method)

    def reply(context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """What the servicer gets as its context."""
        return _Reply(context) if limiter is not None else context

    async def admit(request: Any, context: grpc.aio.ServicerContext[Any, Any], call: Any) -> None:
        """The caller may send this request, has calls left, and the request is well formed."""
        if guard is not None and guard.guards(method):
            try:
                await guard.check(method, request, context)
            except Unauthenticated:
                if limiter is not None:  # refused credentials still cost their address
                    await limiter.admit_failed_credentials(method, context)
                raise
            if limiter is not None and not call.charged:
                call.charged = True  # a stream is charged once, at its first message
                admitted = await limiter.admit(method, context)
                if admitted is not None:
                    call.headers = admitted.headers
        validate(request)

    async def validated(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any], call: Any
    ) -> AsyncIterator[Any]:
        async for request in requests:
            await admit(request, context, call)
            yield request

    async def flush(call: Any) -> None:
        if limiter is not None:
            await call.flush()

    if handler.unary_unary is not None:
        inner_uu: Any = handler.unary_unary  # an async callable under grpc.aio

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = reply(context)
            try:
                await admit(request, context, call)
                answer = await inner_uu(request, call)
                await flush(call)
                return answer
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
            call = reply(context)
            try:
                await admit(request, context, call)
                if inspect.isasyncgenfunction(inner_us):
                    async for item in inner_us(request, call):
                        await flush(call)
                        yield item
                else:
                    await inner_us(request, call)
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
            call = reply(context)
            try:
                answer = await inner_su(validated(requests, context, call), call)
                await flush(call)
                return answer
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
            call = reply(context)
            try:
                if inspect.isasyncgenfunction(inner_ss):
                    async for item in inner_ss(validated(requests, context, call), call):
                        await flush(call)
                        yield item
                else:
                    await inner_ss(validated(requests, context, call), call)
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
