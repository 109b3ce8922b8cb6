"""Stored codes as the API shows them: the one view servicers answer and events carry."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from qrmesh.qr import names, store
from qrmesh.qr.v1 import stored_qr_code_pb2

QrCode = stored_qr_code_pb2.QrCode


def etag_of(code: store.QrCodeRecord) -> str:
    """The etag of a code as stored: it changes with every update."""
    return hashlib.sha256(f"{code.id}:{code.revision}".encode()).hexdigest()[:20]


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf timestamp of `moment`, in UTC."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def qr_code_to_proto(code: store.QrCodeRecord, short_url: str) -> QrCode:
    """The API's view of a stored code (never its password)."""
    proto = QrCode(
        name=names.qr_code_name(code.organization_id, code.id),
        display_name=code.display_name,
        kind=QrCode.Kind.Value(code.kind),
        folder=code.folder,
        tags=list(code.tags),
        status=QrCode.Status.Value(code.status),
        create_time=timestamp(code.created_at),
        update_time=timestamp(code.updated_at),
        scan_count=code.scan_count,
        etag=etag_of(code),
    )
    proto.content.ParseFromString(code.content)
    proto.design.ParseFromString(code.design)
    if code.short_code is not None:
        proto.short_code = code.short_code
        proto.short_url = short_url
        proto.rules.ParseFromString(code.rules)
        proto.rules.max_scans = code.max_scans
        proto.rules.password_protected = code.password_hash is not None
        proto.redirect_type = QrCode.RedirectType.Value(code.redirect_type)
    return proto
