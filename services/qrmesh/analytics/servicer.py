"""AnalyticsService: protos to analytics queries and back (no SQL, no rules here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from qrmesh.analytics import export
from qrmesh.analytics.config import AnalyticsConfig
from qrmesh.analytics.domain.buckets import Granularity
from qrmesh.analytics.live import LiveHub
from qrmesh.analytics.queries import Queries, Query
from qrmesh.analytics.scope import Scopes, code_id, organization_id
from qrmesh.analytics.v1 import analytics_pb2, analytics_service_pb2, analytics_service_pb2_grpc
from qrmesh.platform.errors import InvalidArgument
from qrmesh.platform.server import Resources

Context = grpc.aio.ServicerContext[Any, Any]
svc = analytics_service_pb2
ExportFormat = svc.ExportScansRequest.Format


def _time(request: Any, field: str, json_name: str) -> datetime | None:
    if not request.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(request, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.field(json_name, "is not a valid time", reason="INVALID_TIME_RANGE") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    elapsed = moment - _EPOCH
    return timestamp_pb2.Timestamp(seconds=elapsed.days * 86_400 + elapsed.seconds, nanos=elapsed.microseconds * 1000)


def _granularity(value: int) -> Granularity:
    return Granularity(value) if value else Granularity.DAY


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """Summaries, time series, breakdowns, peak times, comparisons, the live feed and exports."""

    def __init__(self, resources: Resources) -> None:
        if resources.engine is None or resources.redis is None:
            raise RuntimeError("the analytics service needs its database and Redis")
        config = AnalyticsConfig.from_settings(resources.settings)
        settings = resources.settings
        self.scopes = Scopes(config.qr_address, service=settings.service, service_secret=settings.service_secret)
        self.queries = Queries(resources.engine, self.scopes)
        self.exports = export.Exports(self.queries)
        self.live = LiveHub(resources.redis)
        # Live feeds end as shutdown begins, so the server does not wait the grace period for them.
        resources.on_stopping.append(self.live.close)
        resources.on_close.append(self.scopes.close)

    async def _query(self, request: Any) -> Query:
        return await self.queries.query(
            request.parent,
            list(request.qr_codes),
            request.folder,
            request.tag,
            _time(request, "start_time", "startTime"),
            _time(request, "end_time", "endTime"),
            request.time_zone,
            request.include_bots,
        )

    async def GetScanSummary(self, request: svc.GetScanSummaryRequest, context: Context) -> svc.ScanSummary:
        summary = await self.queries.summary(await self._query(request))
        answer = svc.ScanSummary(scans=summary.scans, unique_visitors=summary.uniques, bot_scans=summary.bot_scans)
        if summary.first is not None:
            answer.first_scan_time.CopyFrom(_stamp(summary.first))
        if summary.last is not None:
            answer.last_scan_time.CopyFrom(_stamp(summary.last))
        return answer

    async def GetScanTimeSeries(self, request: svc.GetScanTimeSeriesRequest, context: Context) -> svc.ScanTimeSeries:
        query = await self._query(request)
        granularity = _granularity(request.granularity)
        series = await self.queries.time_series(query, granularity)
        return svc.ScanTimeSeries(
            buckets=[
                svc.TimeBucket(start_time=_stamp(bucket.start), scans=bucket.scans, unique_visitors=bucket.uniques)
                for bucket in series
            ],
            time_zone=query.zone.key,
            granularity=granularity.value,  # type: ignore[arg-type]
        )

    async def GetScanBreakdown(self, request: svc.GetScanBreakdownRequest, context: Context) -> svc.ScanBreakdown:
        result = await self.queries.breakdown(await self._query(request), request.dimension, request.limit)
        return svc.ScanBreakdown(
            dimension=request.dimension,
            entries=[
                svc.BreakdownEntry(
                    value=entry.value, scans=entry.scans, unique_visitors=entry.uniques, share=entry.share
                )
                for entry in result.entries
            ],
            other_scans=result.other_scans,
            total_scans=result.total_scans,
        )

    async def GetPeakTimes(self, request: svc.GetPeakTimesRequest, context: Context) -> svc.PeakTimes:
        query = await self._query(request)
        cells = await self.queries.peak_times(query)
        return svc.PeakTimes(
            cells=[
                # google.type.DayOfWeek: MONDAY = 1 ... SUNDAY = 7.
                svc.PeakCell(day_of_week=index // 24 + 1, hour=index % 24, scans=scans)
                for index, scans in enumerate(cells)
            ],
            time_zone=query.zone.key,
        )

    async def CompareScans(self, request: svc.CompareScansRequest, context: Context) -> svc.ScanComparison:
        granularity = _granularity(request.granularity)
        result = await self.queries.compare(
            request.parent,
            list(request.qr_codes),
            list(request.tags),
            _time(request, "start_time", "startTime"),
            _time(request, "end_time", "endTime"),
            request.time_zone,
            request.include_bots,
            granularity,
        )
        return svc.ScanComparison(
            bucket_start_times=[_stamp(start) for start in result.starts],
            series=[
                svc.ComparedSeries(
                    key=series.key, display_name=series.display_name, total_scans=sum(series.scans), scans=series.scans
                )
                for series in result.series
            ],
            time_zone=result.time_zone,
            granularity=granularity.value,  # type: ignore[arg-type]
        )

    async def WatchScans(
        self, request: svc.WatchScansRequest, context: Context
    ) -> AsyncIterator[svc.WatchScansResponse]:
        organization = organization_id(request.parent)
        if request.qr_code:
            code_id(request.qr_code, organization, field="qrCode")
        async for response in self.live.watch(organization, request.qr_code, request.include_bots):
            yield response

    async def ExportScans(
        self, request: svc.ExportScansRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        query = await self._query(request)
        xlsx = request.format == ExportFormat.XLSX
        content_type = export.XLSX_TYPE if xlsx else export.CSV_TYPE
        what = analytics_pb2.Dimension.Name(request.dimension).lower() if request.dimension else "scans"
        filename = f"{what}-{query.start:%Y%m%d}-{query.end:%Y%m%d}.{'xlsx' if xlsx else 'csv'}"
        chunks = self.exports.xlsx(query, request.dimension) if xlsx else self.exports.csv(query, request.dimension)
        first = True
        async for chunk in chunks:
            if first:
                await context.send_initial_metadata((("content-disposition", f'attachment; filename="{filename}"'),))
                first = False
            yield httpbody_pb2.HttpBody(content_type=content_type, data=chunk)
