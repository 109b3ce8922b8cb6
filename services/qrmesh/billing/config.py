"""The billing service's own settings (QRMESH_BILLING_*), read from `Settings.extra`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from qrmesh.billing.domain.providers import DEFAULT_TOLERANCE
from qrmesh.platform.settings import Settings, int_setting


def _int(extra: dict[str, str], name: str, default: int, *, low: int, high: int) -> int:
    return int_setting(
        {f"QRMESH_BILLING_{k}": v for k, v in extra.items()}, f"QRMESH_BILLING_{name}", default, low=low, high=high
    )


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class BillingConfig:
    """Grace, the job's pace, where usage is counted and the payment provider's webhook secrets."""

    usage_addresses: tuple[str, ...] = ()
    """QRMESH_BILLING_USAGE_ADDRS: host:port of every service that serves UsageService (identity, qr),
    comma-separated. Every plan change that takes effect at once is checked against their counts."""
    grace: timedelta = timedelta(days=7)
    """QRMESH_BILLING_GRACE_DAYS (default 7): how long a PAST_DUE subscription keeps its plan."""
    job_interval: float = 60.0
    """QRMESH_BILLING_JOB_INTERVAL (seconds, default 60): how often due subscriptions are advanced and the
    lapses in Redis are rewritten from the database (by one replica at a time)."""
    stripe_webhook_secrets: tuple[str, ...] = ()
    """QRMESH_BILLING_STRIPE_WEBHOOK_SECRET: the endpoint's signing secret(s), comma-separated while one is
    rolled. Empty: Stripe deliveries are refused."""
    webhook_tolerance: int = DEFAULT_TOLERANCE
    """QRMESH_BILLING_WEBHOOK_TOLERANCE (seconds, default 300): how old a signed delivery may be."""
    socket: str = ""
    """QRMESH_BILLING_SOCKET: a Unix socket path billing also serves gRPC on. Services ask billing about plans
    and billing asks them about usage, so on one machine (`make run`, the tests) someone's address must be known
    before it starts: a path in a private folder is, with no free port to pick and lose to another process.
    Empty (Kubernetes): TCP only, reached by its Service name."""

    @classmethod
    def from_settings(cls, settings: Settings) -> BillingConfig:
        """Parse QRMESH_BILLING_* variables, failing with a message that names the bad one."""
        extra = dict(settings.extra)
        return cls(
            usage_addresses=_list(extra.get("USAGE_ADDRS", "")),
            grace=timedelta(days=_int(extra, "GRACE_DAYS", 7, low=0, high=90)),
            job_interval=float(_int(extra, "JOB_INTERVAL", 60, low=1, high=3600)),
            stripe_webhook_secrets=_list(extra.get("STRIPE_WEBHOOK_SECRET", "")),
            webhook_tolerance=_int(extra, "WEBHOOK_TOLERANCE", DEFAULT_TOLERANCE, low=10, high=3600),
            socket=extra.get("SOCKET", "").strip(),
        )
