"""The qr service's operations on stored codes: each runs domain rules and store calls in one transaction.

The servicers translate protos to these calls and back; nothing here knows
gRPC. Content, design and rules are kept as serialized protos, checked with
the same code the render RPCs use, so a stored code always renders. Links of
dynamic codes reach Redis after the commit (`LinkPublisher`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as redis
from argon2 import PasswordHasher
from google.protobuf import json_format
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from qrmesh.billing.client import Plans, UnconfiguredPlans, require_feature, require_room
from qrmesh.billing.domain.entitlements import DYNAMIC_CODES
from qrmesh.events.v1 import event_pb2
from qrmesh.platform.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from qrmesh.platform.events import new_event
from qrmesh.qr import events, links, names, store
from qrmesh.qr.convert import etag_of, qr_code_to_proto
from qrmesh.qr.domain import ids, labels, listing, shortcodes
from qrmesh.qr.domain.link_rules import check_password, merge_rules, normalize_rules
from qrmesh.qr.domain.plan_features import required_features
from qrmesh.qr.domain.render import Image, render
from qrmesh.qr.domain.updates import UpdatePlan, password_change
from qrmesh.qr.link_publisher import LinkPublisher, link_from_row
from qrmesh.qr.rendering import check_renderable, prefixed, prepare
from qrmesh.qr.v1 import design_pb2, qr_code_pb2, qr_code_service_pb2, stored_qr_code_pb2

log = logging.getLogger("qrmesh.qr.service")

REQUEST_ID_TTL = timedelta(days=1)
MAX_SCOPE_CODES = 100_000
"""At most this many codes in one scope (`codes_in_scope`)."""
QrCode = stored_qr_code_pb2.QrCode
LinkRules = stored_qr_code_pb2.LinkRules
RenderRequest = qr_code_service_pb2.RenderQrCodeRequest

# argon2id at OWASP's second recommended setting: link passwords are checked on every scan that needs
# one, so they cost less than account passwords (19 MiB, 2 passes) while staying memory-hard.
_LINK_PASSWORD_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def utcnow() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


def hash_link_password(password: str) -> str:
    """The argon2id hash a link password is stored as."""
    return _LINK_PASSWORD_HASHER.hash(password)


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of codes, the next page's token ("" on the last) and how many match in all."""

    items: list[store.QrCodeRecord]
    next_page_token: str
    total_size: int


@dataclass(frozen=True, slots=True)
class _Checked:
    """The columns of a code's content, design and rules after every check."""

    content: bytes
    design: bytes
    rules: bytes
    max_scans: int


class QrCodes:
    """Every operation on stored codes, over one database engine and one Redis client."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: redis.Redis,
        *,
        public_base_url: str,
        plans: Plans | None = None,
        events_stream: str = "events",
    ) -> None:
        self.plans: Plans = plans or UnconfiguredPlans("QRMESH_QR_BILLING_ADDR")
        """What each organization's plan allows (dynamic codes, design and rule features)."""
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.redis = client
        self.public_base_url = public_base_url.rstrip("/")
        self.publisher = LinkPublisher(self.sessions, client)
        self.events = events.EventRelay(self.sessions, client, events_stream)
        """Appends the events changes queue (`qr_code.*`, `batch.completed`) to the events stream."""

    async def start(self) -> None:
        """Start background work (links left unwritten are written again)."""
        await self.publisher.start()
        await self.events.start()

    async def close(self) -> None:
        """Stop background work."""
        await self.publisher.close()
        await self.events.close()

    def short_url(self, short_code: str) -> str:
        """The URL a dynamic code's image encodes."""
        return shortcodes.short_url(self.public_base_url, short_code)

    def code_event(self, type: str, code: store.QrCodeRecord) -> event_pb2.Event:
        """A `qr_code.*` event carrying the code as the API shows it."""
        short_url = self.short_url(code.short_code) if code.short_code is not None else ""
        view = qr_code_to_proto(code, short_url)
        data = json_format.MessageToDict(view)
        return new_event(type, names.organization_name(code.organization_id), view.name, data)

    # ------------------------------------------------------------ checks shared by create and update

    async def _check(
        self,
        kind: str,
        content: qr_code_pb2.Content,
        design: design_pb2.Design,
        rules: LinkRules | None,
        short_code_length: int,
    ) -> _Checked:
        """Content, design and rules checked together; the design is checked with what the image will encode."""
        if kind == "DYNAMIC" and content.WhichOneof("kind") != "url":
            raise InvalidArgument.field(
                "qrCode.content.url",
                "a DYNAMIC code needs url content: it is where scans are redirected",
                reason="DYNAMIC_NEEDS_URL",
            )
        try:
            if kind == "DYNAMIC":
                prepare(RenderRequest(content=content))  # the destination is a valid URL payload
                placeholder = self.short_url("x" * short_code_length)
                encoded = qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url=placeholder))
                await asyncio.to_thread(check_renderable, RenderRequest(content=encoded, design=design))
            else:
                await asyncio.to_thread(check_renderable, RenderRequest(content=content, design=design))
        except InvalidArgument as error:
            raise prefixed(error, "qrCode.") from None
        stored_rules = LinkRules()
        max_scans = 0
        if rules is not None:
            stored_rules = normalize_rules(rules, field="qrCode.rules")
            max_scans = stored_rules.max_scans
            stored_rules.ClearField("password")
            stored_rules.ClearField("max_scans")
        return _Checked(
            content=content.SerializeToString(deterministic=True),
            design=design.SerializeToString(deterministic=True),
            rules=stored_rules.SerializeToString(deterministic=True),
            max_scans=max_scans,
        )

    # ------------------------------------------------------------ codes

    async def create(self, organization: str, code: QrCode, request_id: str) -> store.QrCodeRecord:
        """Store a new code; a DYNAMIC one gets its alias or a random short code. A repeated request id
        (same organization, within a day) answers the code the first request made."""
        kind = "DYNAMIC" if code.kind == QrCode.DYNAMIC else "STATIC"
        display_name = labels.normalize_display_name(code.display_name, field="qrCode.displayName")
        tags = labels.normalize_tags(list(code.tags), field="qrCode.tags")
        folder = labels.normalize_folder(code.folder, field="qrCode.folder")
        status = QrCode.Status.Name(code.status) if code.status else "ACTIVE"
        if not code.HasField("content"):
            raise InvalidArgument.field("qrCode.content", "is required", reason="CONTENT_REQUIRED")
        alias = ""
        password_hash: str | None = None
        redirect_type = "FOUND"
        if kind == "STATIC":
            for present, field, what in (
                (bool(code.short_code), "qrCode.shortCode", "a short code"),
                (code.HasField("rules"), "qrCode.rules", "rules"),
                (code.redirect_type != QrCode.REDIRECT_TYPE_UNSPECIFIED, "qrCode.redirectType", "a redirect type"),
            ):
                if present:
                    raise InvalidArgument.field(
                        field,
                        f"only a DYNAMIC code has {what}; a STATIC code encodes its content itself",
                        reason="DYNAMIC_ONLY",
                    )
        else:
            if code.short_code:
                alias = shortcodes.check_alias(code.short_code, field="qrCode.shortCode")
            if code.redirect_type:
                redirect_type = QrCode.RedirectType.Name(code.redirect_type)
        length = len(alias) if alias else shortcodes.MAX_RANDOM_LENGTH
        rules = code.rules if kind == "DYNAMIC" else None
        checked = await self._check(kind, code.content, code.design, rules, length)
        await self._require_features(
            organization,
            required_features(
                old_design=None,
                new_design=code.design,
                old_rules=None,
                new_rules=rules,
                password_set=rules is not None and bool(rules.password),
            ),
        )
        if rules is not None and rules.password:
            password_hash = await asyncio.to_thread(hash_link_password, rules.password)
        # An unlimited plan needs no count (nor the lock that serializes counting).
        limited = (
            kind == "DYNAMIC"
            and (await self.plans.entitlements(names.organization_name(organization))).limit(DYNAMIC_CODES) is not None
        )
        now = utcnow()
        async with self.sessions.begin() as session:
            if request_id:
                await store.advisory_lock(f"request:{organization}:{request_id}", session=session)
                earlier = await store.find_request(
                    organization, request_id, session=session, since=now - REQUEST_ID_TTL
                )
                if earlier is not None:
                    found = await store.get_qr_code(organization, earlier, session=session)
                    if found is not None:
                        return found
            code_id = ids.new_id()
            short_code = None
            if limited:
                # Counted under a per-organization lock: two creates at the limit cannot both pass.
                await store.advisory_lock(f"dynamic-codes:{organization}", session=session)
                used = await store.count_dynamic_codes(organization, session=session)
                await require_room(self.plans, names.organization_name(organization), DYNAMIC_CODES, usage=used)
            if kind == "DYNAMIC":
                short_code = await self._claim_short_code(session, organization, code_id, alias, now)
            record = await store.insert_qr_code(
                session=session,
                values={
                    "id": code_id,
                    "organization_id": organization,
                    "display_name": display_name,
                    "kind": kind,
                    "content": checked.content,
                    "design": checked.design,
                    "folder": folder,
                    "tags": list(tags),
                    "tag_keys": [labels.tag_key(tag) for tag in tags],
                    "status": status,
                    "short_code": short_code,
                    "rules": checked.rules,
                    "password_hash": password_hash,
                    "max_scans": checked.max_scans,
                    "claimed_scans": 0,
                    "redirect_type": redirect_type,
                    "scan_count": 0,
                    "revision": 1,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            if request_id:
                await store.remember_request(
                    session=session,
                    organization_id=organization,
                    request_id=request_id,
                    qr_code_id=code_id,
                    now=now,
                    stale=now - REQUEST_ID_TTL,
                )
            await events.record(session, [self.code_event(events.QR_CODE_CREATED, record)])
        self.events.wake()
        if record.short_code is not None:
            await self.publisher.publish([record.short_code])
        return record

    async def _require_features(self, organization: str, features: list[str]) -> None:
        """PERMISSION_DENIED (FEATURE_NOT_IN_PLAN) for the first of `features` the plan lacks."""
        for feature in features:
            await require_feature(self.plans, names.organization_name(organization), feature)

    async def usage(self, organization: str) -> dict[str, int]:
        """What the organization uses of its plan's limits that qr counts (for the billing service)."""
        async with self.sessions.begin() as session:
            return {DYNAMIC_CODES: await store.count_dynamic_codes(organization, session=session)}

    async def _claim_short_code(
        self, session: AsyncSession, organization: str, code_id: str, alias: str, now: datetime
    ) -> str:
        if alias:
            if not await store.claim_short_code(
                alias, session=session, organization_id=organization, qr_code_id=code_id, now=now
            ):
                raise AlreadyExists(
                    f"the short code {alias!r} is taken (short codes are never reused); choose another",
                    reason="SHORT_CODE_TAKEN",
                    metadata={"short_code": alias},
                )
            return alias
        for length in shortcodes.candidate_lengths():
            candidate = shortcodes.random_short_code(length)
            if await store.claim_short_code(
                candidate, session=session, organization_id=organization, qr_code_id=code_id, now=now
            ):
                return candidate
            log.info("short code collision", extra={"length": length})
        raise Unavailable("could not find a free short code; try again", reason="SHORT_CODE_EXHAUSTED")

    async def get(self, organization: str, code_id: str) -> store.QrCodeRecord:
        """A code of this organization."""
        async with self.sessions.begin() as session:
            found = await store.get_qr_code(organization, code_id, session=session)
        if found is None:
            raise _not_found(organization, code_id)
        return found

    async def list_codes(
        self, organization: str, filters: listing.Filters, order: listing.Order, size: int, token: str
    ) -> Listing:
        """A page of the organization's codes that match `filters`, in `order`."""
        scope = listing.scope(organization, filters, order)
        after = listing.decode_page_token(token, scope, order)
        limit = listing.page_size(size)
        async with self.sessions.begin() as session:
            rows = await store.list_qr_codes(
                organization, session=session, filters=filters, order=order, after=after, limit=limit + 1
            )
            total = await store.count_qr_codes(organization, session=session, filters=filters)
        sizes = [len(record.content) + len(record.design) + len(record.rules) + 1024 for record, _ in rows]
        shown = rows[: listing.fitting(sizes, limit)]
        next_token = listing.encode_page_token(shown[-1][1], scope) if len(rows) > len(shown) else ""
        return Listing([record for record, _ in shown], next_token, total)

    async def codes_in_scope(
        self, organization: str, filters: listing.Filters, code_ids: list[str]
    ) -> list[store.CodeInScope]:
        """The organization's codes in a folder and/or with a tag (or only `code_ids`), deleted ones too where
        known; FAILED_PRECONDITION (SCOPE_TOO_LARGE) beyond `MAX_SCOPE_CODES`."""
        async with self.sessions.begin() as session:
            found = await store.codes_in_scope(
                organization,
                session=session,
                folder=filters.folder,
                tag=filters.tag,
                ids=code_ids,
                limit=MAX_SCOPE_CODES + 1,
            )
        if len(found) > MAX_SCOPE_CODES:
            raise FailedPrecondition(
                f"more than {MAX_SCOPE_CODES:,} codes are in this scope; choose a smaller folder or tag",
                reason="SCOPE_TOO_LARGE",
            )
        return found

    async def update(self, organization: str, code_id: str, incoming: QrCode, plan: UpdatePlan) -> store.QrCodeRecord:
        """Change the fields `plan` names; ABORTED (ETAG_MISMATCH) when `incoming.etag` is stale."""
        password = incoming.rules.password if plan.changes("rules") else ""
        change = password_change(plan, password)
        new_hash = None
        if change == "set":
            check_password(password, field="qrCode.rules.password")
            new_hash = await asyncio.to_thread(hash_link_password, password)
        async with self.sessions.begin() as session:
            current = await store.get_qr_code(organization, code_id, session=session, for_update=True)
            if current is None:
                raise _not_found(organization, code_id)
            if incoming.etag and incoming.etag != etag_of(current):
                raise Aborted(
                    "the code changed since you read it (etag mismatch); read it again and retry",
                    reason="ETAG_MISMATCH",
                )
            values = await self._updated_values(current, incoming, plan, password_set=change == "set")
            if current.kind == "DYNAMIC" and plan.changes("rules"):
                if change == "set":
                    values["password_hash"] = new_hash
                elif change == "clear":
                    values["password_hash"] = None
            values["updated_at"] = utcnow()
            updated = await store.update_qr_code(code_id, session=session, values=values)
            if updated.short_code is not None:
                await store.bump_link(updated.short_code, session=session, now=values["updated_at"])
            await events.record(session, [self.code_event(events.QR_CODE_UPDATED, updated)])
        self.events.wake()
        if updated.short_code is not None:
            await self.publisher.publish([updated.short_code])
        return updated

    async def _updated_values(
        self, current: store.QrCodeRecord, incoming: QrCode, plan: UpdatePlan, *, password_set: bool = False
    ) -> dict[str, Any]:
        dynamic = current.kind == "DYNAMIC"
        if incoming.kind and QrCode.Kind.Name(incoming.kind) != current.kind:
            raise InvalidArgument.field(
                "qrCode.kind", "cannot change after creation; create a new code instead", reason="IMMUTABLE_FIELD"
            )
        if incoming.short_code and incoming.short_code != current.short_code:
            raise InvalidArgument.field("qrCode.shortCode", "cannot change after creation", reason="IMMUTABLE_FIELD")
        values: dict[str, Any] = {}
        if plan.changes("display_name"):
            values["display_name"] = labels.normalize_display_name(incoming.display_name, field="qrCode.displayName")
        if plan.changes("folder"):
            values["folder"] = labels.normalize_folder(incoming.folder, field="qrCode.folder")
        if plan.changes("tags"):
            tags = labels.normalize_tags(list(incoming.tags), field="qrCode.tags")
            values["tags"] = list(tags)
            values["tag_keys"] = [labels.tag_key(tag) for tag in tags]
        if plan.changes("status"):
            values["status"] = QrCode.Status.Name(incoming.status) if incoming.status else "ACTIVE"
        if plan.changes("redirect_type"):
            if incoming.redirect_type and not dynamic:
                raise InvalidArgument.field(
                    "qrCode.redirectType", "only a DYNAMIC code redirects", reason="DYNAMIC_ONLY"
                )
            values["redirect_type"] = QrCode.RedirectType.Name(incoming.redirect_type or QrCode.FOUND)
        content = qr_code_pb2.Content.FromString(current.content)
        design = design_pb2.Design.FromString(current.design)
        if plan.changes("content"):
            if not incoming.HasField("content"):
                raise InvalidArgument.field("qrCode.content", "is required", reason="CONTENT_REQUIRED")
            content = incoming.content
        if plan.changes("design"):
            design = incoming.design
        rules: LinkRules | None = None
        if plan.changes("rules"):
            if not dynamic:
                if incoming.HasField("rules") and incoming.rules.ByteSize():
                    raise InvalidArgument.field("qrCode.rules", "only a DYNAMIC code has rules", reason="DYNAMIC_ONLY")
            elif plan.whole_rules:
                rules = incoming.rules
            else:
                stored = LinkRules.FromString(current.rules)
                stored.max_scans = current.max_scans
                rules = merge_rules(stored, incoming.rules, plan.rules_paths, field="updateMask")
        elif dynamic:
            rules = LinkRules.FromString(current.rules)
            rules.max_scans = current.max_scans
        if not (plan.changes("content") or plan.changes("design") or plan.changes("rules")):
            return values
        length = len(current.short_code) if current.short_code else 0
        checked = await self._check(current.kind, content, design, rules, length)
        stored_rules = LinkRules.FromString(current.rules) if dynamic else None
        await self._require_features(
            current.organization_id,
            required_features(
                old_design=design_pb2.Design.FromString(current.design),
                new_design=design if plan.changes("design") else None,
                old_rules=stored_rules,
                new_rules=rules if plan.changes("rules") else None,
                password_set=password_set,
            ),
        )
        if plan.changes("content"):
            values["content"] = checked.content
        if plan.changes("design"):
            values["design"] = checked.design
        if plan.changes("rules") and dynamic:
            values["rules"] = checked.rules
            values["max_scans"] = checked.max_scans
        return values

    async def delete(self, organization: str, code_id: str, etag: str) -> None:
        """Delete a code; its short code is retired for good. ABORTED (ETAG_MISMATCH) when `etag` is stale."""
        now = utcnow()
        async with self.sessions.begin() as session:
            current = await store.get_qr_code(organization, code_id, session=session, for_update=True)
            if current is None:
                raise _not_found(organization, code_id)
            if etag and etag != etag_of(current):
                raise Aborted(
                    "the code changed since you read it (etag mismatch); read it again and retry",
                    reason="ETAG_MISMATCH",
                )
            await store.delete_qr_code(code_id, session=session)
            if current.short_code is not None:
                await store.bump_link(current.short_code, session=session, now=now, retire=True)
            await events.record(session, [self.code_event(events.QR_CODE_DELETED, current)])
        self.events.wake()
        if current.short_code is not None:
            await self.publisher.publish([current.short_code])

    async def render(self, organization: str, code_id: str, options: RenderRequest) -> Image:
        """A stored code as an image in the format and size of `options` (a DYNAMIC code encodes its short URL)."""
        code = await self.get(organization, code_id)
        request = RenderRequest()
        request.CopyFrom(options)
        request.design.ParseFromString(code.design)
        if code.short_code is not None:
            request.content.url.url = self.short_url(code.short_code)
        else:
            request.content.ParseFromString(code.content)
        text, design, render_options = prepare(request)
        return await asyncio.to_thread(render, text, design, render_options)

    # ------------------------------------------------------------ scan settings

    async def get_scan_settings(self, organization: str) -> store.ScanSettingsRecord | None:
        """The organization's scan settings; None while they are the defaults."""
        async with self.sessions.begin() as session:
            return await store.get_scan_settings(organization, session=session)

    async def update_scan_settings(self, organization: str, store_full_ip_addresses: bool) -> store.ScanSettingsRecord:
        """Change the organization's scan settings; every link of its dynamic codes carries the change."""
        now = utcnow()
        async with self.sessions.begin() as session:
            await store.lock_scan_settings(organization, session=session)
            before = await store.get_scan_settings(organization, session=session)
            settings = await store.put_scan_settings(
                organization, session=session, store_full_ip_addresses=store_full_ip_addresses, now=now
            )
            changed = (before.store_full_ip_addresses if before else False) != store_full_ip_addresses
            codes = await store.bump_organization_links(organization, session=session) if changed else []
        await self.publisher.publish(codes)
        return settings

    # ------------------------------------------------------------ links (the redirect's questions)

    async def resolve_link(self, short_code: str) -> stored_qr_code_pb2.Link:
        """The link of a short code as stored, also written to Redis; NOT_FOUND when no live code has it."""
        if not shortcodes.looks_like_short_code(short_code):
            raise _short_code_not_found(short_code)
        async with self.sessions.begin() as session:
            rows = await store.links_for([short_code], session=session)
        row = rows[0] if rows else None
        link = link_from_row(row) if row is not None else None
        try:
            if row is None:
                await links.put_missing(self.redis, short_code)
            else:
                await links.put(self.redis, short_code, row.version, link)
        except (RedisError, OSError) as exc:
            log.warning("could not cache a link in Redis", extra={"error": repr(exc)})
        if link is None:
            raise _short_code_not_found(short_code)
        return link

    async def claim_scan(self, short_code: str) -> store.Claim:
        """Count one scan against the code's `max_scans`, exactly under concurrency."""
        if not shortcodes.looks_like_short_code(short_code):
            raise _short_code_not_found(short_code)
        async with self.sessions.begin() as session:
            claim = await store.claim_scan(short_code, session=session)
        if claim is None:
            raise _short_code_not_found(short_code)
        return claim


def _not_found(organization: str, code_id: str) -> NotFound:
    name = names.qr_code_name(organization, code_id)
    return NotFound(f"{name} does not exist", reason="QR_CODE_NOT_FOUND", metadata={"resource": name})


def _short_code_not_found(short_code: str) -> NotFound:
    return NotFound("no QR code has this short code", reason="SHORT_CODE_NOT_FOUND")
