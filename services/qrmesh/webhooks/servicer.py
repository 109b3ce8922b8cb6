"""WebhookService: translates protos to `Webhooks` calls and back. No rules here."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from qrmesh.platform.auth import current_principal
from qrmesh.platform.errors import InvalidArgument, PermissionDenied
from qrmesh.webhooks import convert, names
from qrmesh.webhooks.service import CHANGEABLE, WebhookChange, Webhooks
from qrmesh.webhooks.v1 import webhook_pb2, webhook_service_pb2, webhook_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
svc = webhook_service_pb2


def _in_scope(organization: str) -> str:
    """`organization` (an id), which must be the one the guard let the caller into."""
    if current_principal().organization != names.organization_name(organization):
        raise PermissionDenied("the request is not scoped to this organization")
    return organization


def _webhook(name: str, field: str) -> tuple[str, str]:
    organization, webhook = names.webhook_ids(name, field=field)
    return _in_scope(organization), webhook


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    """gRPC face of webhooks and their deliveries."""

    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    async def CreateWebhook(self, request: svc.CreateWebhookRequest, context: Context) -> webhook_pb2.Webhook:
        organization = _in_scope(names.organization_id(request.parent, field="parent"))
        hook = request.webhook
        record = await self.webhooks.create(
            organization,
            url=hook.url,
            event_types=list(hook.event_types),
            qr_codes=list(hook.qr_codes),
            display_name=hook.display_name,
            contact_email=hook.contact_email,
            request_id=request.request_id,
        )
        return convert.webhook_to_proto(record, with_secret=True)

    async def GetWebhook(self, request: svc.GetWebhookRequest, context: Context) -> webhook_pb2.Webhook:
        return convert.webhook_to_proto(await self.webhooks.get(*_webhook(request.name, "name")))

    async def ListWebhooks(self, request: svc.ListWebhooksRequest, context: Context) -> svc.ListWebhooksResponse:
        organization = _in_scope(names.organization_id(request.parent, field="parent"))
        rows, token = await self.webhooks.page(organization, request.page_size, request.page_token)
        return svc.ListWebhooksResponse(webhooks=[convert.webhook_to_proto(r) for r in rows], next_page_token=token)

    async def UpdateWebhook(self, request: svc.UpdateWebhookRequest, context: Context) -> webhook_pb2.Webhook:
        organization, webhook = _webhook(request.webhook.name, "webhook.name")
        paths = list(request.update_mask.paths) or list(CHANGEABLE)
        unknown = [p for p in paths if p not in CHANGEABLE]
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"cannot change {unknown[0]!r}; one of {', '.join(CHANGEABLE)}", reason="INVALID_MASK"
            )
        hook = request.webhook
        change = WebhookChange(
            display_name=hook.display_name if "display_name" in paths else None,
            url=hook.url if "url" in paths else None,
            event_types=list(hook.event_types) if "event_types" in paths else None,
            qr_codes=list(hook.qr_codes) if "qr_codes" in paths else None,
            enabled=hook.enabled if "enabled" in paths else None,
            contact_email=hook.contact_email if "contact_email" in paths else None,
        )
        return convert.webhook_to_proto(await self.webhooks.update(organization, webhook, change))

    async def DeleteWebhook(self, request: svc.DeleteWebhookRequest, context: Context) -> empty_pb2.Empty:
        await self.webhooks.delete(*_webhook(request.name, "name"))
        return empty_pb2.Empty()

    async def RotateWebhookSecret(
        self, request: svc.RotateWebhookSecretRequest, context: Context
    ) -> webhook_pb2.Webhook:
        record = await self.webhooks.rotate_secret(*_webhook(request.name, "name"))
        return convert.webhook_to_proto(record, with_secret=True)

    async def ListWebhookDeliveries(
        self, request: svc.ListWebhookDeliveriesRequest, context: Context
    ) -> svc.ListWebhookDeliveriesResponse:
        organization, webhook = _webhook(request.parent, "parent")
        rows, token = await self.webhooks.deliveries(organization, webhook, request.page_size, request.page_token)
        return svc.ListWebhookDeliveriesResponse(
            deliveries=[convert.delivery_to_proto(r) for r in rows], next_page_token=token
        )

    async def RedeliverWebhookDelivery(
        self, request: svc.RedeliverWebhookDeliveryRequest, context: Context
    ) -> webhook_pb2.WebhookDelivery:
        organization, webhook, delivery = names.delivery_ids(request.name, field="name")
        record = await self.webhooks.redeliver(_in_scope(organization), webhook, delivery)
        return convert.delivery_to_proto(record)

    async def SendTestWebhookEvent(
        self, request: svc.SendTestWebhookEventRequest, context: Context
    ) -> webhook_pb2.WebhookDelivery:
        return convert.delivery_to_proto(await self.webhooks.send_test(*_webhook(request.name, "name")))
