"""Errors of the qr service that the platform does not define (yet)."""

from __future__ import annotations

import grpc

from qrmesh.platform.errors import QrmeshError


class Aborted(QrmeshError):
    """The request lost a race with another change (e.g. a stale etag); read again and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"
