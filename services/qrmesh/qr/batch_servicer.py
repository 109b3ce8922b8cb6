"""BatchService: translates protos to `Batches` calls and back. No rules here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

from qrmesh.qr import names
from qrmesh.qr.batches import (
    Batches,
    batch_ids,
    batch_to_proto,
    error_to_proto,
    template_ids,
    template_to_proto,
)
from qrmesh.qr.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
svc = batch_service_pb2


class BatchServicer(batch_service_pb2_grpc.BatchServiceServicer):
    """BatchService over one `Batches`."""

    def __init__(self, batches: Batches) -> None:
        self.batches = batches

    async def CreateBatch(self, request: svc.CreateBatchRequest, context: Context) -> batch_pb2.Batch:
        organization = names.organization_id(request.parent, field="parent")
        which = request.WhichOneof("source")
        source: bytes | list[dict[str, str]]
        if which == "csv_data":
            source = request.csv_data
        elif which == "csv_text":
            source = request.csv_text.encode("utf-8")
        else:
            source = [dict(row.values) for row in request.rows.rows]
        outcome = await self.batches.create(
            organization,
            request.batch,
            source,
            validate_only=request.validate_only,
            skip_invalid_rows=request.skip_invalid_rows,
            request_id=request.request_id,
        )
        return batch_to_proto(outcome.batch, outcome.errors)

    async def GetBatch(self, request: svc.GetBatchRequest, context: Context) -> batch_pb2.Batch:
        organization, batch_id = batch_ids(request.name, field="name")
        found = await self.batches.get(organization, batch_id)
        return batch_to_proto(found, await self.batches.first_errors(batch_id))

    async def ListBatches(self, request: svc.ListBatchesRequest, context: Context) -> svc.ListBatchesResponse:
        organization = names.organization_id(request.parent, field="parent")
        page, token = await self.batches.list_batches(organization, request.page_size, request.page_token)
        return svc.ListBatchesResponse(batches=[batch_to_proto(b, []) for b in page], next_page_token=token)

    async def CancelBatch(self, request: svc.CancelBatchRequest, context: Context) -> batch_pb2.Batch:
        organization, batch_id = batch_ids(request.name, field="name")
        return batch_to_proto(await self.batches.cancel(organization, batch_id), [])

    async def WatchBatch(self, request: svc.WatchBatchRequest, context: Context) -> AsyncIterator[batch_pb2.Batch]:
        organization, batch_id = batch_ids(request.name, field="name")
        async for record in self.batches.watch(organization, batch_id):
            yield batch_to_proto(record, [])

    async def ListBatchRowErrors(
        self, request: svc.ListBatchRowErrorsRequest, context: Context
    ) -> svc.ListBatchRowErrorsResponse:
        organization, batch_id = batch_ids(request.parent, field="parent")
        page, token, total = await self.batches.row_errors(
            organization, batch_id, request.page_size, request.page_token
        )
        return svc.ListBatchRowErrorsResponse(
            row_errors=[error_to_proto(e) for e in page], next_page_token=token, total_size=total
        )

    async def DownloadBatch(
        self, request: svc.DownloadBatchRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        organization, batch_id = batch_ids(request.name, field="name")
        first = True
        async for chunk in self.batches.archive(organization, batch_id):
            if first:
                disposition = f'attachment; filename="batch-{batch_id}.zip"'
                await context.send_initial_metadata((("content-disposition", disposition),))
                first = False
            yield httpbody_pb2.HttpBody(content_type="application/zip", data=chunk)

    async def DownloadBatchManifest(
        self, request: svc.DownloadBatchManifestRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        organization, batch_id = batch_ids(request.name, field="name")
        first = True
        async for chunk in self.batches.manifest(organization, batch_id):
            if first:
                disposition = f'attachment; filename="batch-{batch_id}-manifest.csv"'
                await context.send_initial_metadata((("content-disposition", disposition),))
                first = False
            yield httpbody_pb2.HttpBody(content_type="text/csv; charset=utf-8", data=chunk)

    async def CreateBatchTemplate(
        self, request: svc.CreateBatchTemplateRequest, context: Context
    ) -> batch_pb2.BatchTemplate:
        organization = names.organization_id(request.parent, field="parent")
        template = request.batch_template
        return template_to_proto(await self.batches.create_template(organization, template.display_name, template.spec))

    async def GetBatchTemplate(self, request: svc.GetBatchTemplateRequest, context: Context) -> batch_pb2.BatchTemplate:
        organization, template_id = template_ids(request.name, field="name")
        return template_to_proto(await self.batches.get_template(organization, template_id))

    async def ListBatchTemplates(
        self, request: svc.ListBatchTemplatesRequest, context: Context
    ) -> svc.ListBatchTemplatesResponse:
        organization = names.organization_id(request.parent, field="parent")
        page, token = await self.batches.list_templates(organization, request.page_size, request.page_token)
        return svc.ListBatchTemplatesResponse(
            batch_templates=[template_to_proto(t) for t in page], next_page_token=token
        )

    async def UpdateBatchTemplate(
        self, request: svc.UpdateBatchTemplateRequest, context: Context
    ) -> batch_pb2.BatchTemplate:
        organization, template_id = template_ids(request.batch_template.name, field="batchTemplate.name")
        updated = await self.batches.update_template(
            organization, template_id, request.batch_template, list(request.update_mask.paths)
        )
        return template_to_proto(updated)

    async def DeleteBatchTemplate(self, request: svc.DeleteBatchTemplateRequest, context: Context) -> empty_pb2.Empty:
        organization, template_id = template_ids(request.name, field="name")
        await self.batches.delete_template(organization, template_id, request.etag)
        return empty_pb2.Empty()
