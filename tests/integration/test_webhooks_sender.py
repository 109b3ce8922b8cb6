"""The webhook sender over real sockets: every resolved address checked, the checked address used (no
second resolution), redirects re-checked, answers read up to a cap, attempts bounded by the timeout."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from qrmesh.webhooks.sender import EXCERPT, Sender
from tests.integration.test_webhooks import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    yield found
    server.close()
    await server.wait_closed()


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    found = Sender(connect_timeout=2, total_timeout=3, max_redirects=2, allow_private=True)
    yield found
    await found.close()


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Make the running loop resolve host names from `answers` (one list of addresses per successive look-up);
    the names looked up, in order."""
    loop = asyncio.get_running_loop()
    asked: list[str] = []

    async def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        addresses = answers[host].pop(0) if len(answers[host]) > 1 else answers[host][0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return asked


async def test_a_host_name_resolving_to_a_private_address_is_refused(
    sender: Sender, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(
        monkeypatch, {"hooks.example.test": [["127.0.0.1", "10.0.0.7"]], "meta.example.test": [["169.254.169.254"]]}
    )
    for host in ("hooks.example.test", "meta.example.test"):
        result = await sender.send(f"http://{host}:{receiver.port}/x", {}, b"{}")
        assert result.unsafe, result
        assert result.error.startswith("refused: resolves to a forbidden address")
    assert receiver.received == []


async def test_the_checked_address_is_the_one_connected_to(
    sender: Sender, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding resolver: the first answer is allowed, any later one points inside.
    asked = fake_dns(monkeypatch, {"rebind.example.test": [["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]]})
    result = await sender.send(f"http://rebind.example.test:{receiver.port}/pinned?a=1", {"x-test": "1"}, b"{}")
    assert result.status_code == 200, result
    assert asked == ["rebind.example.test"]
    [request] = receiver.received
    assert request.headers["host"] == f"rebind.example.test:{receiver.port}"
    assert request.path == "/pinned?a=1"
    assert request.headers["x-test"] == "1"


async def test_redirects_are_followed_only_to_allowed_targets(sender: Sender, receiver: Receiver) -> None:
    receiver.plan = [(307, {"location": "/second"}), (302, {"location": "http://[::ffff:169.254.169.254]/"})]
    result = await sender.send(receiver.url("/first"), {}, b"{}")
    assert result.unsafe
    assert "169.254.169.254" in result.error
    assert [r.path for r in receiver.received] == ["/first", "/second"]
    receiver.plan = [(301, {"location": receiver.url("/a")})] * 3
    result = await sender.send(receiver.url("/loop"), {}, b"{}")
    assert result.error == "too many redirects"


async def test_big_answers_are_cut_and_silent_endpoints_time_out(sender: Sender) -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n" + b"a" * 200_000)
        await writer.drain()
        await asyncio.sleep(30)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    for handler in (big, silent):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            result = await sender.send(f"http://127.0.0.1:{port}/", {}, b"{}")
        finally:
            server.close()
        if handler is big:
            assert result.status_code == 200
            assert result.excerpt == "a" * EXCERPT
        else:
            assert result.status_code == 0
            assert result.error == "timed out after 3 s"


async def test_private_targets_need_the_setting() -> None:
    strict = Sender(connect_timeout=1, total_timeout=2, max_redirects=0, allow_private=False)
    try:
        for url in ("http://127.0.0.1:9/", "http://localhost:9/", "http://[::1]:9/"):
            result = await strict.send(url, {}, b"{}")
            assert result.unsafe, url
    finally:
        await strict.close()
