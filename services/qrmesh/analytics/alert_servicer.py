"""AlertService: alert rules between protos and `alert_rules` (validation of what the rules cannot say)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from qrmesh.analytics.alert_rules import AlertRules, RuleValues, StoredRule
from qrmesh.analytics.domain.alerts import MAX_NAME, MAX_RECIPIENTS, Kind, email_problem, normalized_recipients
from qrmesh.analytics.scope import code_id, code_name, organization_id
from qrmesh.analytics.v1 import alerts_pb2, alerts_pb2_grpc
from qrmesh.platform.errors import InvalidArgument

Context = grpc.aio.ServicerContext[Any, Any]
_RULE = re.compile(r"organizations/([A-Za-z0-9_-]{1,64})/alertRules/([A-Za-z0-9_-]{1,64})")
CHANGEABLE = ("display_name", "qr_code", "threshold", "first_scan", "email_recipients", "enabled")
_JSON = {
    "display_name": "displayName",
    "qr_code": "qrCode",
    "first_scan": "firstScan",
    "email_recipients": "emailRecipients",
}


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def rule_name(name: str, *, field: str = "name") -> tuple[str, str]:
    """(organization id, rule id) of `organizations/{organization}/alertRules/{alert_rule}`."""
    match = _RULE.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field,
            "must be a resource name like organizations/{organization}/alertRules/{alert_rule}",
            reason="INVALID_NAME",
        )
    return match.group(1), match.group(2)


def to_proto(rule: StoredRule) -> alerts_pb2.AlertRule:
    values = rule.values
    proto = alerts_pb2.AlertRule(
        name=f"organizations/{rule.organization_id}/alertRules/{rule.id}",
        display_name=values.display_name,
        qr_code=code_name(rule.organization_id, values.qr_code_id) if values.qr_code_id else "",
        email_recipients=list(values.recipients),
        enabled=values.enabled,
        create_time=_stamp(rule.create_time),
        update_time=_stamp(rule.update_time),
    )
    if values.kind is Kind.THRESHOLD:
        proto.threshold.more_than = values.more_than
        proto.threshold.window_minutes = values.window_minutes
    else:
        proto.first_scan.SetInParent()
    if rule.last_fired_time is not None:
        proto.last_fired_time.CopyFrom(_stamp(rule.last_fired_time))
    return proto


def values_of(rule: alerts_pb2.AlertRule, organization: str, prefix: str) -> RuleValues:
    """The rule's values, checked (`prefix` is the JSON path of the rule in the request)."""
    display_name = rule.display_name.strip()
    if not display_name:
        raise InvalidArgument.field(f"{prefix}.displayName", "is required", reason="DISPLAY_NAME_REQUIRED")
    if len(display_name) > MAX_NAME:
        raise InvalidArgument.field(f"{prefix}.displayName", f"is longer than {MAX_NAME} characters")
    code = code_id(rule.qr_code, organization, field=f"{prefix}.qrCode") if rule.qr_code else ""
    condition = rule.WhichOneof("condition")
    if condition is None:
        raise InvalidArgument.field(
            f"{prefix}.threshold", "a rule needs a condition: threshold or firstScan", reason="CONDITION_REQUIRED"
        )
    recipients = normalized_recipients(rule.email_recipients)
    if len(recipients) > MAX_RECIPIENTS:
        raise InvalidArgument.field(f"{prefix}.emailRecipients", f"at most {MAX_RECIPIENTS} addresses")
    for index, address in enumerate(recipients):
        problem = email_problem(address)
        if problem is not None:
            raise InvalidArgument.field(f"{prefix}.emailRecipients[{index}]", problem, reason="INVALID_EMAIL")
    threshold = condition == "threshold"
    return RuleValues(
        display_name=display_name,
        qr_code_id=code,
        kind=Kind.THRESHOLD if threshold else Kind.FIRST_SCAN,
        more_than=rule.threshold.more_than if threshold else 0,
        window_minutes=rule.threshold.window_minutes if threshold else 0,
        recipients=tuple(recipients),
        enabled=rule.enabled,
    )


def merged(current: StoredRule, change: alerts_pb2.AlertRule, paths: list[str]) -> alerts_pb2.AlertRule:
    """The current rule with the fields named by the mask taken from `change`."""
    proto = to_proto(current)
    chosen = paths or list(CHANGEABLE)
    for path in chosen:
        if path not in CHANGEABLE:
            raise InvalidArgument.field(
                "updateMask", f"{path!r} cannot be changed; changeable: {', '.join(CHANGEABLE)}", reason="INVALID_MASK"
            )
    conditions = [path for path in chosen if path in {"threshold", "first_scan"}]
    if conditions:
        condition = change.WhichOneof("condition")
        if condition in conditions:
            getattr(proto, condition).CopyFrom(getattr(change, condition))
        elif paths:  # named in the mask but not given: a mistake, not "keep it"
            field = _JSON.get(conditions[0], conditions[0])
            raise InvalidArgument.field(
                f"alertRule.{field}", "is in the update mask but not set", reason="INVALID_MASK"
            )
    for path in chosen:
        if path in {"threshold", "first_scan"}:
            continue
        if path == "email_recipients":
            del proto.email_recipients[:]
            proto.email_recipients.extend(change.email_recipients)
        else:
            setattr(proto, path, getattr(change, path))
    return proto


class AlertServicer(alerts_pb2_grpc.AlertServiceServicer):
    """Create, get, list, update and delete alert rules."""

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules

    async def CreateAlertRule(
        self, request: alerts_pb2.CreateAlertRuleRequest, context: Context
    ) -> alerts_pb2.AlertRule:
        organization = organization_id(request.parent)
        values = values_of(request.alert_rule, organization, "alertRule")
        return to_proto(await self.rules.create(organization, values, request.request_id))

    async def GetAlertRule(self, request: alerts_pb2.GetAlertRuleRequest, context: Context) -> alerts_pb2.AlertRule:
        return to_proto(await self.rules.get(*rule_name(request.name)))

    async def ListAlertRules(
        self, request: alerts_pb2.ListAlertRulesRequest, context: Context
    ) -> alerts_pb2.ListAlertRulesResponse:
        rules, token = await self.rules.list(organization_id(request.parent), request.page_size, request.page_token)
        return alerts_pb2.ListAlertRulesResponse(alert_rules=[to_proto(rule) for rule in rules], next_page_token=token)

    async def UpdateAlertRule(
        self, request: alerts_pb2.UpdateAlertRuleRequest, context: Context
    ) -> alerts_pb2.AlertRule:
        organization, rule_id = rule_name(request.alert_rule.name, field="alertRule.name")
        current = await self.rules.get(organization, rule_id)
        proto = merged(current, request.alert_rule, list(request.update_mask.paths))
        values = values_of(proto, organization, "alertRule")
        return to_proto(await self.rules.update(organization, rule_id, values))

    async def DeleteAlertRule(self, request: alerts_pb2.DeleteAlertRuleRequest, context: Context) -> empty_pb2.Empty:
        await self.rules.delete(*rule_name(request.name))
        return empty_pb2.Empty()
