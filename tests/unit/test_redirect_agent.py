"""User-Agent classification on real-world headers."""

from __future__ import annotations

import pytest

from qrmesh.qr.v1 import stored_qr_code_pb2
from qrmesh.redirect.domain.agent import Agent, classify

C = stored_qr_code_pb2.RouteCondition
IOS, ANDROID, WINDOWS, MACOS, LINUX = C.IOS, C.ANDROID, C.WINDOWS, C.MACOS, C.LINUX
MOBILE, TABLET, DESKTOP = C.MOBILE, C.TABLET, C.DESKTOP

PEOPLE = [
    # (user agent, os, device type, browser)
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1",
        IOS,
        MOBILE,
        "Safari",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "CriOS/123.0.6312.52 Mobile/15E148 Safari/604.1",
        IOS,
        MOBILE,
        "Chrome",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "FxiOS/124.0 Mobile/15E148 Safari/605.1.15",
        IOS,
        MOBILE,
        "Firefox",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.0 EdgiOS/123.0.2420.56 Mobile/15E148 Safari/605.1.15",
        IOS,
        MOBILE,
        "Edge",
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/16.6 Mobile/15E148 Safari/604.1",
        IOS,
        TABLET,
        "Safari",
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
        IOS,
        TABLET,
        "Chrome",
    ),
    # An iPadOS web view asking for the desktop site: a Mac header, but with "Mobile/".
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
        IOS,
        TABLET,
        "",
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Mobile Safari/537.36",
        ANDROID,
        MOBILE,
        "Chrome",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
        ANDROID,
        MOBILE,
        "Samsung Internet",
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Mobile Safari/537.36 EdgA/124.0.2478.50",
        ANDROID,
        MOBILE,
        "Edge",
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 "
        "Mobile Safari/537.36 OPR/79.0.4195.76880",
        ANDROID,
        MOBILE,
        "Opera",
    ),
    ("Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0", ANDROID, MOBILE, "Firefox"),
    ("Mozilla/5.0 (Android 14; Tablet; rv:125.0) Gecko/125.0 Firefox/125.0", ANDROID, TABLET, "Firefox"),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Safari/537.36",
        ANDROID,
        TABLET,
        "Chrome",
    ),
    # CUBOT is a phone brand: "bot" in its name does not make it a bot.
    (
        "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Mobile Safari/537.36",
        ANDROID,
        MOBILE,
        "Chrome",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Safari/537.36",
        WINDOWS,
        DESKTOP,
        "Chrome",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Safari/537.36 Edg/124.0.2478.51",
        WINDOWS,
        DESKTOP,
        "Edge",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        WINDOWS,
        DESKTOP,
        "Firefox",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Safari/605.1.15",
        MACOS,
        DESKTOP,
        "Safari",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0",
        MACOS,
        DESKTOP,
        "Firefox",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        MACOS,
        DESKTOP,
        "Chrome",
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", LINUX, DESKTOP, "Firefox"),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", LINUX, DESKTOP, "Firefox"),
    (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Safari/537.36",
        LINUX,
        DESKTOP,
        "Chrome",
    ),
    # In-app browsers: people, not previews (Snapchat's camera scans QR codes).
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Mobile/15E148 [FBAN/FBIOS;FBAV/458.0.0.36.108;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.4;FBLC/en_US]",
        IOS,
        MOBILE,
        "",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Mobile/15E148 Snapchat/12.62.0.37 (like Safari/8617.1.17.10.7, panda)",
        IOS,
        MOBILE,
        "Safari",
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Version/4.0 Chrome/116.0.5845.163 Mobile Safari/537.36 Instagram 297.0.0.33.109 Android",
        ANDROID,
        MOBILE,
        "Chrome",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Mobile/15E148 [Pinterest/iOS]",
        IOS,
        MOBILE,
        "",
    ),
    # "Microsoft" contains "cros": not ChromeOS.
    ("Microsoft Office Word 2014", C.OS_UNSPECIFIED, C.DEVICE_TYPE_UNSPECIFIED, ""),
]


@pytest.mark.parametrize(("user_agent", "os", "device", "browser"), PEOPLE)
def test_people(user_agent: str, os: int, device: int, browser: str) -> None:
    assert classify(user_agent) == Agent(os=os, device_type=device, bot=False, browser=browser)


BOTS = [
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Facebot",
    "Twitterbot/1.0",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Slack-ImgProxy (+https://api.slack.com/robots)",
    "WhatsApp/2.23.20.0 A",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 skype-url-preview@microsoft.com",
    "Pinterest/0.2 (+https://www.pinterest.com/bot.html)",
    "Mozilla/5.0 (compatible; Pinterestbot/1.0; +http://www.pinterest.com/bot.html)",
    "Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 "
    "Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.60 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; Google-InspectionTool/1.0;)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)",
    "Iframely/1.3.1 (+https://iframely.com/docs/about)",
    "Mozilla/5.0 (compatible; vkShare; +http://vk.com/dev/Share)",
    "Viber/20.3.0 CFNetwork/1404.0.5 Darwin/22.3.0",
    "Mozilla/5.0 (compatible; Snap URL Preview Service; bot; snapchat; https://developers.snap.com/robots)",
    "http.rb/5.1.1 (Mastodon/4.2.8; +https://mastodon.social/)",
    "Mozilla/5.0 (compatible; Bluesky Cardyb/1.1; +mailto:support@bsky.app)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Screaming Frog SEO Spider/19.0",
    "FeedFetcher-Google; (+http://www.google.com/feedfetcher.html)",
    "my-link-crawler/0.1",
    "Some Link Preview/2.0",
    "curl/8.5.0",
    "Wget/1.21.4",
    "python-requests/2.31.0",
    "python-httpx/0.27.0",
    "Python/3.11 aiohttp/3.9.3",
    "Go-http-client/2.0",
    "libwww-perl/6.72",
    "Java/17.0.10",
    "axios/1.6.8",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.6367.60 Safari/537.36",
    "",
    "   ",
]


@pytest.mark.parametrize("user_agent", BOTS)
def test_bots(user_agent: str) -> None:
    assert classify(user_agent).bot is True


def test_bots_keep_their_platform() -> None:
    googlebot = classify(BOTS[14])
    assert (googlebot.os, googlebot.device_type, googlebot.bot) == (ANDROID, MOBILE, True)


def test_empty_header_is_an_unknown_bot() -> None:
    assert classify("") == Agent(os=0, device_type=0, bot=True, browser="")


def test_results_are_cached_and_long_headers_are_cut() -> None:
    ua = PEOPLE[0][0]
    assert classify(ua) is classify(ua)
    long = ua + " x" * 2000
    assert classify(long) == classify(ua + " x" * 2000)
    assert classify("curl/8.5.0 " + "a" * 600).bot
    # Only the first 512 characters are read: a token after them is not seen.
    assert not classify("Mozilla/5.0 (Windows NT 10.0) " + "a" * 600 + " Googlebot").bot
