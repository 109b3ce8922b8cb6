"""What a User-Agent header says: operating system, device type, bot or person, browser family."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from qrmesh.qr.v1 import stored_qr_code_pb2

_Condition = stored_qr_code_pb2.RouteCondition

MAX_USER_AGENT_LENGTH = 512
"""Only this much of a header is read (and cached)."""


@dataclass(frozen=True, slots=True)
class Agent:
    """`os` and `device_type` are RouteCondition.Os / .DeviceType values; 0 when unknown."""

    os: int
    device_type: int
    bot: bool
    browser: str


# Link-preview fetchers, crawlers and HTTP libraries: recorded, not counted as scans.
# Lowercase substrings of the header.
_BOT_TOKENS = (
    # Generic words crawlers use in their names ("bot" also catches Googlebot,
    # bingbot, Twitterbot, Slackbot, TelegramBot, Discordbot, LinkedInBot,
    # Applebot, DuckDuckBot, YandexBot, redditbot, Facebot, Pinterestbot).
    "bot",
    "crawler",
    "spider",  # Baiduspider
    "preview",  # SkypeUriPreview, "Snap URL Preview Service"
    "fetcher",
    "facebookexternalhit",
    "slack-imgproxy",
    "whatsapp",
    "google-inspectiontool",
    "embedly",
    "iframely",
    "vkshare",
    "viber",
    "mastodon",
    "bluesky",
    "cardyb",
    "pinterest/0.",  # the crawler; the Pinterest app's browser says "[Pinterest/iOS]"
    # HTTP libraries and headless browsers.
    "curl/",
    "wget/",
    "python-requests",
    "python-httpx",
    "python-urllib",
    "aiohttp",
    "go-http-client",
    "libwww-perl",
    "java/",
    "axios",
    "node-fetch",
    "http.rb/",
    "headlesschrome",
)

# Checked in order, first match wins: browsers built on Chrome or Safari name themselves first.
_BROWSERS = (
    ("edg/", "Edge"),
    ("edga/", "Edge"),
    ("edgios/", "Edge"),
    ("edge/", "Edge"),
    ("samsungbrowser/", "Samsung Internet"),
    ("opr/", "Opera"),
    ("opt/", "Opera"),
    ("opera", "Opera"),
    ("yabrowser/", "Yandex"),
    ("ucbrowser/", "UC Browser"),
    ("firefox/", "Firefox"),
    ("fxios/", "Firefox"),
    ("crios/", "Chrome"),
    ("chrome/", "Chrome"),
    ("chromium/", "Chrome"),
    ("safari/", "Safari"),
)

_MOBILE = _Condition.MOBILE
_TABLET = _Condition.TABLET
_DESKTOP = _Condition.DESKTOP


def classify(user_agent: str) -> Agent:
    """Classify a User-Agent header (cached; only its first 512 characters are read).

    - iOS: iPhone and iPod are mobile, iPad a tablet. iPadOS in desktop mode
      sends a Mac header; when it still carries the `Mobile/` token (which no
      Mac browser sends, but iPad apps' web views do) it is read as an iPad,
      otherwise it cannot be told from a Mac and is macOS.
    - Android: mobile when the header says "Mobile", a tablet otherwise.
    - ChromeOS (`CrOS`) is LINUX, desktop: it runs a Linux kernel and the
      conditions have no ChromeOS of their own.
    - Windows, macOS and other Linux are desktops (Windows Phone: WINDOWS, mobile).
    - Bots: link-preview fetchers, crawlers, HTTP libraries, headless
      browsers, and an empty header. The Snapchat and Pinterest in-app
      browsers are people (Snapchat's camera scans QR codes); their crawlers
      ("Snap URL Preview Service; bot", "Pinterest/0.2", "Pinterestbot") are bots.
    """
    if len(user_agent) > MAX_USER_AGENT_LENGTH:
        user_agent = user_agent[:MAX_USER_AGENT_LENGTH]
    return _classify(user_agent)


@lru_cache(maxsize=8192)
def _classify(user_agent: str) -> Agent:
    ua = user_agent.lower()
    os, device = _platform(ua)
    return Agent(os=os, device_type=device, bot=_is_bot(ua), browser=_browser(ua))


def _platform(ua: str) -> tuple[int, int]:
    if "iphone" in ua or "ipod" in ua:
        return _Condition.IOS, _MOBILE
    if "ipad" in ua:
        return _Condition.IOS, _TABLET
    if "windows phone" in ua:
        return _Condition.WINDOWS, _MOBILE
    if "android" in ua:
        return _Condition.ANDROID, _MOBILE if "mobile" in ua else _TABLET
    if "windows" in ua:
        return _Condition.WINDOWS, _DESKTOP
    if "macintosh" in ua or "mac os x" in ua:
        if "mobile/" in ua:
            return _Condition.IOS, _TABLET
        return _Condition.MACOS, _DESKTOP
    if "cros " in ua or "linux" in ua:  # "cros " with its space: "microsoft" contains "cros"
        return _Condition.LINUX, _MOBILE if "mobile" in ua else _DESKTOP
    if "tablet" in ua:
        return _Condition.OS_UNSPECIFIED, _TABLET
    if "mobile" in ua:
        return _Condition.OS_UNSPECIFIED, _MOBILE
    if "x11" in ua:
        return _Condition.OS_UNSPECIFIED, _DESKTOP
    return _Condition.OS_UNSPECIFIED, _Condition.DEVICE_TYPE_UNSPECIFIED


def _is_bot(ua: str) -> bool:
    if not ua.strip():
        return True
    if "cubot" in ua:  # a phone brand, not a bot
        ua = ua.replace("cubot", "")
    return any(token in ua for token in _BOT_TOKENS)


def _browser(ua: str) -> str:
    for token, name in _BROWSERS:
        if token in ua:
            return name
    return ""
