"""The webhooks service's pure logic: SSRF checks, signatures (against the standardwebhooks package),
retry schedules, envelopes and settings."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import random
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook as ReferenceVerifier

from qrmesh.platform.settings import Settings, SettingsError
from qrmesh.webhooks.config import WebhooksConfig
from qrmesh.webhooks.domain import envelope, retry
from qrmesh.webhooks.domain.sealing import parse_key, seal, unseal
from qrmesh.webhooks.domain.signing import new_secret, secret_key, sign
from qrmesh.webhooks.domain.ssrf import UnsafeUrl, check_addresses, forbidden_reason, parse_url

REFUSED = [
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.1/",
    "http://127.0.0.1:8080/",
    "http://[::1]/",
    "http://[fd00:ec2::254]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "http://100.64.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[fe80::1]/",
    "http://[fec0::1]/",
    "http://localhost/",
    "http://2130706433/",
    "http://0x7f.0.0.1/",
    "ftp://example.com/",
    "file:///etc/passwd",
    "https://user:pass@example.com/",
    "http:///nohost",
]


@pytest.mark.parametrize("url", REFUSED)
def test_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        parse_url(url)


@pytest.mark.parametrize(
    "url", ["https://example.com/hooks?a=1", "http://93.184.215.14:8443/x", "https://[2606:4700::1]/"]
)
def test_public_urls_pass(url: str) -> None:
    target = parse_url(url)
    assert target.scheme in ("http", "https")
    assert target.path.startswith("/")


def test_loopback_only_with_the_setting() -> None:
    assert parse_url("http://127.0.0.1:9000/", allow_private=True).port == 9000
    assert parse_url("http://localhost:9000/", allow_private=True).host == "localhost"
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://192.168.0.1/"):
        with pytest.raises(UnsafeUrl):
            parse_url(url, allow_private=True)


def test_every_resolved_address_is_checked() -> None:
    public = ipaddress.ip_address("93.184.215.14")
    assert check_addresses([public]) == public
    with pytest.raises(UnsafeUrl):
        check_addresses([public, ipaddress.ip_address("10.1.2.3")])
    with pytest.raises(UnsafeUrl):
        check_addresses([])
    assert forbidden_reason(ipaddress.ip_address("8.8.8.8")) is None
    assert forbidden_reason(ipaddress.ip_address("169.254.169.254"), allow_private=True) is not None


def test_signature_verifies_with_the_reference_implementation() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(secret_key(secret)) == 32
    body = envelope.body("qr_code.created", datetime.now(UTC), {"name": "organizations/x/qrCodes/y", "ü": "ß"})
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "msg_1", timestamp, body.encode()),
    }
    verified = ReferenceVerifier(secret).verify(body, headers)
    assert verified["type"] == "qr_code.created"
    tampered = dict(headers, **{"webhook-signature": sign(new_secret(), "msg_1", timestamp, body.encode())})
    with pytest.raises(Exception, match=r"(?i)signature"):
        ReferenceVerifier(secret).verify(body, tampered)


def test_retry_schedule_has_full_jitter_and_ends() -> None:
    rng = random.Random(7)  # noqa: S311 - jitter, not a secret
    schedule = retry.DEFAULT_SCHEDULE
    delays = [retry.retry_delay(schedule, i, rng=rng) for i in range(len(schedule))]
    for step, delay in zip(schedule, delays, strict=True):
        assert delay is not None
        assert step / 2 <= delay <= step
    assert retry.retry_delay(schedule, len(schedule)) is None
    assert 20 * 3600 < sum(schedule) < 30 * 3600  # about a day
    assert [retry.outcome(s) for s in (200, 204, 410, 500, 404, 301)] == [
        "success",
        "success",
        "gone",
        "retry",
        "retry",
        "retry",
    ]


def test_event_types_and_filters() -> None:
    assert envelope.normalize_event_types(["scan.recorded", "qr_code.created", "scan.recorded"]) == [
        "qr_code.created",
        "scan.recorded",
    ]
    assert envelope.normalize_event_types(["*", "qr_code.created"]) == ["*"]
    with pytest.raises(ValueError, match="unknown"):
        envelope.normalize_event_types(["qr_code.exploded"])
    with pytest.raises(ValueError, match="at least one"):
        envelope.normalize_event_types([])
    code = "organizations/o/qrCodes/a"
    assert envelope.wants(["*"], [], "batch.completed", "organizations/o/batches/b")
    assert envelope.wants(["qr_code.created"], [code], "qr_code.created", code)
    assert not envelope.wants(["qr_code.created"], [code], "qr_code.created", "organizations/o/qrCodes/b")
    assert not envelope.wants(["qr_code.created"], [], "qr_code.deleted", code)
    body = json.loads(envelope.body("webhook.test", datetime(2026, 11, 24, tzinfo=UTC), {"a": 1}))
    assert body == {
        "type": "webhook.test",
        "timestamp": "2026-11-24T00:00:00.000000Z",
        "version": "2026-11-01",
        "data": {"a": 1},
    }


def test_config_from_settings() -> None:
    base = Settings(service="webhooks", database_url="postgresql://x/y", redis_url="redis://x")
    config = WebhooksConfig.from_settings(base)
    assert not config.allow_private_targets
    assert config.dispatch
    assert config.retry_schedule == retry.DEFAULT_SCHEDULE
    shrunk = dataclasses.replace(
        base, extra={"RETRY_SCHEDULE": "0.1, 0.2", "ALLOW_PRIVATE_TARGETS": "true", "DISPATCH": "false"}
    )
    config = WebhooksConfig.from_settings(shrunk)
    assert config.retry_schedule == (0.1, 0.2)
    assert config.allow_private_targets
    assert not config.dispatch
    with pytest.raises(SettingsError, match="RETRY_SCHEDULE"):
        WebhooksConfig.from_settings(dataclasses.replace(base, extra={"RETRY_SCHEDULE": "soon"}))
    with pytest.raises(SettingsError, match="ALLOW_PRIVATE_TARGETS"):
        WebhooksConfig.from_settings(dataclasses.replace(base, extra={"ALLOW_PRIVATE_TARGETS": "maybe"}))


def test_secrets_are_sealed_at_rest_when_a_key_is_set() -> None:
    key = parse_key(base64.b64encode(bytes(range(32))).decode())
    secret = new_secret()
    sealed = seal(key, secret, "webhook1")
    assert sealed.startswith("v1:")
    assert secret not in sealed
    assert unseal(key, sealed, "webhook1") == secret
    with pytest.raises(ValueError, match="does not open"):
        unseal(key, sealed, "webhook2")  # bound to its row
    with pytest.raises(ValueError, match="not set"):
        unseal(None, sealed, "webhook1")
    assert seal(None, secret, "webhook1") == secret
    assert unseal(key, secret, "webhook1") == secret  # stored before a key was set
    assert parse_key("") is None
    with pytest.raises(ValueError, match="32 bytes"):
        parse_key(base64.b64encode(b"short").decode())
