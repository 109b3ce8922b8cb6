"""AnalyticsAdminService: what ingestion set aside, for operators and services (service tokens only)."""

from __future__ import annotations

from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.analytics import dead_letters
from qrmesh.analytics.v1 import analytics_pb2, analytics_service_pb2, analytics_service_pb2_grpc


class AnalyticsAdminServicer(analytics_service_pb2_grpc.AnalyticsAdminServiceServicer):
    """Dead letters of the stream this service consumes."""

    def __init__(self, engine: AsyncEngine, stream: str) -> None:
        self.engine = engine
        self.stream = stream

    async def ListDeadLetters(
        self, request: analytics_service_pb2.ListDeadLettersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_service_pb2.ListDeadLettersResponse:
        page = await dead_letters.list_dead_letters(self.engine, self.stream, request.page_size, request.page_token)
        answer = analytics_service_pb2.ListDeadLettersResponse(next_page_token=page.next_page_token)
        for letter in page.letters:
            message = analytics_pb2.DeadLetter(
                stream_id=letter.stream_id,
                reason=letter.reason,
                deliveries=letter.deliveries,
                payload=letter.payload[:4096],
            )
            message.time.FromDatetime(letter.time)
            answer.dead_letters.append(message)
        return answer
