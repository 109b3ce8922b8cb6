"""Domain errors become google.rpc.Status with ErrorInfo, BadRequest and RetryInfo."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from qrmesh.platform.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted
from qrmesh.platform.interceptors import status_for


def unpack(status_any: object, kind: type) -> object:
    message = kind()
    assert status_any.Unpack(message)  # type: ignore[attr-defined]
    return message


def test_not_found_carries_reason_and_metadata() -> None:
    status = status_for(NotFound("qr code not found", reason="QR_CODE_NOT_FOUND", metadata={"name": "q/1"}))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == "qr code not found"
    info = unpack(status.details[0], error_details_pb2.ErrorInfo)
    assert info.reason == "QR_CODE_NOT_FOUND"  # type: ignore[attr-defined]
    assert info.domain == "qrmesh.dev"  # type: ignore[attr-defined]
    assert dict(info.metadata) == {"name": "q/1"}  # type: ignore[attr-defined]


def test_invalid_argument_lists_field_violations() -> None:
    error = InvalidArgument("bad", violations=[FieldViolation("a.b", "is required"), FieldViolation("c", "too big")])
    status = status_for(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad = unpack(status.details[1], error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [  # type: ignore[attr-defined]
        ("a.b", "is required"),
        ("c", "too big"),
    ]


def test_resource_exhausted_says_when_to_retry() -> None:
    status = status_for(ResourceExhausted("slow down", retry_after=1.5, reason="LOGIN_THROTTLED"))
    retry = unpack(status.details[1], error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 1500  # type: ignore[attr-defined]
