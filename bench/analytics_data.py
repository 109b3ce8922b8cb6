"""Realistic synthetic scan events for the analytics benchmarks (ingestion and queries).

`generate(n, ...)` yields `ScanEvent`s as the redirect writes them: user agents
drawn from ~50 real-world strings with weights close to what QR scans see
(mostly phones: iPhone Safari, Android Chrome, Samsung Internet, in-app
browsers), countries weighted, times spread over a year with a daily and a
weekly shape (evenings and weekends busier) and growth over the year, about
10% of scans repeating an earlier visitor of the same day and code, about 3%
bots (link previews, crawlers). Deterministic for a seed.

    python -m bench.analytics_data --count 5   # print a few

`bench_database` creates a benchmark database beside DATABASE_URL (never a test database) with the
analytics schema migrated.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import make_url

from qrmesh.analytics.domain import enrichment
from qrmesh.platform.database import create_engine, migrate
from qrmesh.scans.v1 import scan_event_pb2

Event = scan_event_pb2.ScanEvent

# (user agent, weight): weights roughly follow the share of QR scans by device and browser.
USER_AGENTS: tuple[tuple[str, float], ...] = (
    # iPhone, Safari and in-app
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        14.0,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Mobile/15E148 Safari/604.1",
        12.0,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_7_10 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/16.6 Mobile/15E148 Safari/604.1",
        5.0,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "CriOS/130.0.6723.90 Mobile/15E148 Safari/604.1",
        3.0,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Mobile/22A3354 Instagram 352.0.0.28.109 (iPhone15,3; iOS 18_0; en_US; en; scale=3.00; 1290x2796; "
        "650487425)",
        2.0,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Mobile/15E148 [FBAN/FBIOS;FBAV/478.0.0.40.107;FBBV/633245839;FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;"
        "FBSV/17.4;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
        1.5,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "GSA/335.0.679554660 Mobile/15E148 Safari/604.1",
        1.5,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 15_8_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/15.6.6 Mobile/15E148 Safari/604.1",
        1.0,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "FxiOS/132.0 Mobile/15E148 Safari/605.1.15",
        0.4,
    ),
    # Android phones
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 "
        "Mobile Safari/537.36",
        12.0,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.86 "
        "Mobile Safari/537.36",
        3.0,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
        4.0,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
        3.0,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-A145R) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.6668.100 "
        "Mobile Safari/537.36",
        1.5,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.102 "
        "Mobile Safari/537.36",
        1.5,
    ),
    (
        "Mozilla/5.0 (Linux; Android 15; Pixel 9 Pro) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.6778.39 Mobile Safari/537.36",
        0.8,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; 2201117TG) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.6613.146 "
        "Mobile Safari/537.36",
        1.2,
    ),
    (
        "Mozilla/5.0 (Linux; Android 12; M2101K6G) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.6533.103 "
        "Mobile Safari/537.36",
        0.8,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; CPH2581) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.58 "
        "Mobile Safari/537.36",
        0.7,
    ),
    (
        "Mozilla/5.0 (Linux; Android 12; moto g(60)) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.6478.186 Mobile Safari/537.36",
        0.5,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; V2205) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.6422.165 "
        "Mobile Safari/537.36",
        0.4,
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; HRY-LX1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.230 "
        "Mobile Safari/537.36",
        0.3,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-G991B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/130.0.6723.86 Mobile Safari/537.36 Instagram 354.0.0.38.96 "
        "Android (34/14; 420dpi; 1080x2177; samsung; SM-G991B; o1s; exynos2100; en_US; 651293431)",
        1.0,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-A525F Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/129.0.6668.100 Mobile Safari/537.36 "
        "[FB_IAB/FB4A;FBAV/484.0.0.53.107;]",
        0.8,
    ),
    (
        "Mozilla/5.0 (Android 14; Mobile; rv:132.0) Gecko/132.0 Firefox/132.0",
        0.4,
    ),
    (
        "Mozilla/5.0 (Linux; U; Android 12; en-us; 22011119UY Build/SP1A.210812.016) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/112.0.5615.136 Mobile Safari/537.36 XiaoMi/MiuiBrowser/14.12.1-gn",
        0.3,
    ),
    # Tablets
    (
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
        "Mobile/15E148 Safari/604.1",
        1.5,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.86 "
        "Safari/537.36",
        0.5,
    ),
    (
        "Mozilla/5.0 (Linux; Android 11; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/130.2.1 "
        "like Chrome/130.0.6723.58 Safari/537.36",
        0.2,
    ),
    # Desktops (links shared beside the code)
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 "
        "Safari/537.36",
        6.0,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 "
        "Safari/537.36 Edg/130.0.0.0",
        2.0,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
        0.8,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
        "Safari/605.1.15",
        1.5,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.0.0 Safari/537.36",
        1.5,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
        0.4,
    ),
    (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 "
        "Safari/537.36",
        0.2,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 "
        "Safari/537.36 OPR/114.0.0.0",
        0.2,
    ),
    # TV, console, wearable
    (
        "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) 76.0.3809.146/6.0 TV "
        "Safari/537.36",
        0.05,
    ),
    (
        "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko)",
        0.03,
    ),
    (
        "Mozilla/5.0 (Linux; Android 11; SM-R910 Build/RP1A.200720.012; wv) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.43 Mobile Safari/537.36",
        0.02,
    ),
)

# Bots and link previews (about 3% of scans; the redirect marks them).
BOT_AGENTS: tuple[tuple[str, float], ...] = (
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", 3.0),
    ("WhatsApp/2.24.22.79 A", 3.0),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 2.0),
    ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", 1.0),
    ("Twitterbot/1.0", 1.0),
    ("TelegramBot (like TwitterBot)", 1.0),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 1.0),
    ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", 0.5),
    ("LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)", 0.5),
    ("curl/8.5.0", 0.5),
    ("python-requests/2.32.3", 0.3),
)

# (country, weight, Accept-Language, IPv4 /24 prefix for addresses in it)
COUNTRIES: tuple[tuple[str, float, str, str], ...] = (
    ("US", 30.0, "en-US,en;q=0.9", "24.48.0"),
    ("DE", 8.0, "de-DE,de;q=0.9,en;q=0.8", "84.128.0"),
    ("GB", 7.0, "en-GB,en;q=0.9", "81.2.69"),
    ("FR", 5.0, "fr-FR,fr;q=0.9,en;q=0.7", "90.8.0"),
    ("IN", 6.0, "en-IN,en;q=0.9,hi;q=0.8", "49.36.0"),
    ("BR", 4.0, "pt-BR,pt;q=0.9", "177.12.0"),
    ("JP", 4.0, "ja-JP,ja;q=0.9", "126.0.0"),
    ("SE", 3.0, "sv-SE,sv;q=0.9,en;q=0.8", "81.224.0"),
    ("ES", 3.0, "es-ES,es;q=0.9", "83.32.0"),
    ("IT", 3.0, "it-IT,it;q=0.9", "79.0.0"),
    ("NL", 2.5, "nl-NL,nl;q=0.9,en;q=0.8", "84.104.0"),
    ("CA", 3.0, "en-CA,en;q=0.9,fr-CA;q=0.8", "24.36.0"),
    ("AU", 2.5, "en-AU,en;q=0.9", "1.120.0"),
    ("MX", 2.0, "es-MX,es;q=0.9", "187.188.0"),
    ("PL", 1.5, "pl-PL,pl;q=0.9", "83.0.0"),
    ("KR", 1.5, "ko-KR,ko;q=0.9", "1.224.0"),
    ("TR", 1.2, "tr-TR,tr;q=0.9", "78.160.0"),
    ("ZA", 1.0, "en-ZA,en;q=0.9", "41.0.0"),
    ("NG", 0.8, "en-NG,en;q=0.9", "105.112.0"),
    ("AR", 0.8, "es-AR,es;q=0.9", "181.0.0"),
    ("", 0.7, "", "10.0.0"),
)

REFERERS: tuple[tuple[str, float], ...] = (
    ("", 85.0),
    ("https://www.instagram.com/", 4.0),
    ("https://l.facebook.com/", 3.0),
    ("https://www.google.com/", 3.0),
    ("https://t.co/", 1.5),
    ("android-app://com.google.android.gm/", 1.5),
    ("https://www.linkedin.com/", 1.0),
    ("https://news.example.org:8443/article/42", 1.0),
)

HOUR_WEIGHTS = (
    0.3,
    0.2,
    0.15,
    0.1,
    0.1,
    0.2,
    0.5,
    0.9,
    1.2,
    1.3,
    1.4,
    1.5,
    1.8,
    1.6,
    1.4,
    1.4,
    1.5,
    1.8,
    2.1,
    2.3,
    2.2,
    1.8,
    1.2,
    0.6,
)
"""Relative scans per UTC hour of day (a lunch and an evening peak)."""
WEEKDAY_WEIGHTS = (0.9, 0.9, 0.95, 1.0, 1.15, 1.35, 1.2)
"""Monday..Sunday."""


class _Choice:
    """Weighted choice by bisecting cumulative weights (random.choices re-sums every call)."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.cumulative = list(itertools.accumulate(weights))
        self.total = self.cumulative[-1]

    def pick(self, rng: random.Random) -> int:
        return bisect.bisect_right(self.cumulative, rng.random() * self.total)


@dataclass(frozen=True, slots=True)
class Shape:
    """What is generated: one organization's codes over a time range."""

    organization: str = "bench-org"
    codes: int = 50
    """Codes scanned; a Zipf-like few get most scans."""
    start: datetime = datetime(2025, 12, 1, tzinfo=UTC)
    hours: int = 365 * 24
    """Scans fall in [start, start + hours)."""
    repeat: float = 0.10
    """Share of scans by a visitor already seen that day on that code."""
    bots: float = 0.03
    """Share of bot scans."""
    destinations: int = 3
    """Destinations per code (rules pick among them)."""


def _hours(shape: Shape) -> tuple[list[datetime], _Choice]:
    """Every hour of the range with its weight: time of day, weekday, growth over the range."""
    hours = [shape.start + timedelta(hours=index) for index in range(shape.hours)]
    weights = [
        HOUR_WEIGHTS[hour.hour] * WEEKDAY_WEIGHTS[hour.weekday()] * (0.6 + 0.8 * index / len(hours))
        for index, hour in enumerate(hours)
    ]
    return hours, _Choice(weights)


def _visitor(seed: bytes) -> str:
    return hashlib.blake2b(seed, digest_size=12).hexdigest()


GENERATOR_VERSION = 2
"""Bumped whenever what `generate` / `rows` produce for a seed changes (keys kept benchmark databases)."""


class _Draw(NamedTuple):
    event_id: str
    moment: datetime
    code: int
    destination: int
    agent: str
    referer: str
    language: str
    country: str
    address: str
    visitor: str
    bot: bool
    method: str


def _draws(count: int, shape: Shape, seed: int) -> Iterator[_Draw]:
    """The random draws of `count` scans; `generate` and `rows` dress them as events or stored rows."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible
    hours, hour_choice = _hours(shape)
    agents = _Choice([weight for _, weight in USER_AGENTS])
    bots = _Choice([weight for _, weight in BOT_AGENTS])
    countries = _Choice([weight for _, weight, _, _ in COUNTRIES])
    referers = _Choice([weight for _, weight in REFERERS])
    code_choice = _Choice([1.0 / (rank + 1) ** 0.9 for rank in range(shape.codes)])
    recent: dict[tuple[int, int], list[tuple[str, str, str, str, str]]] = {}
    """(day, code) -> visitors of that day: (visitor id, user agent, country, language, address)."""
    for _ in range(count):
        code = code_choice.pick(rng)
        hour = hours[hour_choice.pick(rng)]
        moment = hour + timedelta(seconds=rng.random() * 3600)
        day = moment.toordinal()
        bot = rng.random() < shape.bots
        seen = recent.get((day, code))
        if not bot and seen and rng.random() < shape.repeat:
            visitor, agent, country, language, address = seen[rng.randrange(len(seen))]
        else:
            agent = BOT_AGENTS[bots.pick(rng)][0] if bot else USER_AGENTS[agents.pick(rng)][0]
            country, _, language, prefix = COUNTRIES[countries.pick(rng)]
            address = f"{prefix}.{rng.randrange(256)}"
            visitor = _visitor(f"{day}|{address}|{rng.random()}".encode())
            if not bot:
                seen = recent.setdefault((day, code), [])
                if len(seen) < 64:
                    seen.append((visitor, agent, country, language, address))
        if len(recent) > 50_000:
            recent.clear()
        destination = rng.randrange(shape.destinations)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        referer = REFERERS[referers.pick(rng)][0]
        method = "GET" if not bot or rng.random() < 0.7 else "HEAD"
        yield _Draw(
            event_id, moment, code, destination, agent, referer, language, country, address, visitor, bot, method
        )


def generate(count: int, shape: Shape | None = None, *, seed: int = 7) -> Iterator[Event]:
    """`count` scan events of one organization, in no particular time order (the stream is not ordered
    either: replayed spools arrive late)."""
    shape = shape or Shape()
    for draw in _draws(count, shape, seed):
        timestamp = Timestamp()
        timestamp.FromDatetime(draw.moment)
        yield Event(
            event_id=draw.event_id,
            time=timestamp,
            short_code=f"b{draw.code:05d}",
            qr_code=f"organizations/{shape.organization}/qrCodes/code-{draw.code:04d}",
            organization=f"organizations/{shape.organization}",
            outcome=Event.REDIRECTED,
            destination_url=f"https://shop.example.com/landing/{draw.code}/{draw.destination}",
            matched_rule="" if draw.destination == 0 else f"route-{draw.destination}",
            user_agent=draw.agent,
            referer=draw.referer,
            accept_language=draw.language,
            country=draw.country,
            ip_address=draw.address,
            visitor_id=draw.visitor,
            bot=draw.bot,
            method=draw.method,
        )


def rows(count: int, shape: Shape | None = None, *, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """The rows of `analytics.scans` (columns `SCAN_COLUMNS`) that the ingestion stores for `generate`'s events
    of the same arguments (no city database), without building the events: about three times faster."""
    shape = shape or Shape()
    organization = shape.organization
    agents: dict[tuple[str, bool], tuple[str, str, str, str]] = {}
    for draw in _draws(count, shape, seed):
        device = agents.get((draw.agent, draw.bot))
        if device is None:
            parsed = enrichment.parse_agent(draw.agent, bot=draw.bot)
            device = agents[(draw.agent, draw.bot)] = (
                parsed.device_type,
                parsed.device_brand,
                parsed.os,
                parsed.browser,
            )
        yield (
            draw.event_id,
            draw.moment,
            organization,
            f"code-{draw.code:04d}",
            f"b{draw.code:05d}",
            Event.REDIRECTED,
            f"https://shop.example.com/landing/{draw.code}/{draw.destination}",
            "" if draw.destination == 0 else f"route-{draw.destination}",
            draw.country,
            "",
            "",
            *device,
            enrichment.language(draw.language),
            enrichment.referrer_host(draw.referer) if draw.referer else "",
            draw.bot,
            draw.visitor,
            draw.address,
            draw.agent,
        )


MIGRATIONS = Path(__file__).resolve().parent.parent / "services" / "qrmesh" / "analytics" / "migrations"


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def bench_database(admin_url: str, name: str, *, fresh: bool = False) -> str:
    """The URL of database `name` beside DATABASE_URL, created if absent (dropped first when `fresh`), with the
    analytics schema migrated."""
    connection = await asyncpg.connect(_plain(admin_url))
    try:
        if fresh:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = make_url(_plain(admin_url)).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, schema="analytics")
    try:
        await migrate(engine, MIGRATIONS, "analytics")
    finally:
        await engine.dispose()
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5, help="print this many events")
    args = parser.parse_args()
    for event in generate(args.count):
        print(event)
    print(f"{len(USER_AGENTS)} user agents, {len(BOT_AGENTS)} bots, {len(COUNTRIES)} countries")


if __name__ == "__main__":
    main()
