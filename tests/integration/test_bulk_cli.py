"""`qrmesh bulk` against a real qr service (with identity, billing, PostgreSQL and Redis): row errors as a
table, progress to the end, the ZIP and manifest downloaded, every image decoding to its row's payload."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from qrmesh.bulk_cli import BulkOptions, UsageError, add_command, options_from_args
from qrmesh.bulk_cli import run_bulk as _run_bulk
from qrmesh.platform.server import Server
from tests.imaging import decode_png
from tests.integration.billing_helpers import subscribe, subscribe_through_edge
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import api_key


async def run_bulk(options: BulkOptions, **streams: Any) -> int:
    """The CLI, bounded: a batch that never ends fails the test instead of hanging the run."""
    async with asyncio.timeout(120):
        return await _run_bulk(options, **streams)


@pytest.fixture(scope="module")
async def identity(identity_server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
async def owner(identity: grpc.aio.Channel, billing_server: Server) -> Account:
    """An owner of an organization on Business (100,000 bulk rows, API keys)."""
    account = await sign_up(identity, "bulk-cli")
    await subscribe(billing_server, account, "business")
    return account


@pytest.fixture(scope="module")
async def key(identity: grpc.aio.Channel, owner: Account) -> str:
    return await api_key(identity, owner, "qr:write", "qr:read")


def options(qr_server: Server, owner: Account, key: str, file: Path, **fields: object) -> BulkOptions:
    return BulkOptions(
        file=file,
        organization=owner.organization,
        address=f"127.0.0.1:{qr_server.port}",
        api_key=key,
        **fields,  # type: ignore[arg-type]
    )


def write_contacts(path: Path, broken: bool) -> list[dict[str, str]]:
    """A semicolon CSV in Windows-1252 (as spreadsheets save it) of contacts; with `broken`, rows 3 and 6 are bad."""
    rows = [
        {"First name": f"Zoë{i}", "Last name": f"Ångström-{i}", "Email": f"zoe{i}@example.com", "Site": ""}
        for i in range(1, 9)
    ]
    rows[1]["Site"] = "https://example.com/zoe"
    if broken:
        rows[2]["First name"] = ""
        rows[2]["Last name"] = ""
        rows[5]["Site"] = "javascript:alert(1)"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), delimiter=";", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(text.getvalue().encode("cp1252"))
    return rows


VCARD_MAP = {
    "First name": "vcard.first_name",
    "Last name": "vcard.last_name",
    "Email": "vcard.emails",
    "Site": "vcard.urls",
}


async def test_invalid_rows_are_listed_and_nothing_is_created(
    qr_server: Server, owner: Account, key: str, tmp_path: Path
) -> None:
    table = tmp_path / "contacts.csv"
    write_contacts(table, broken=True)
    out, err = io.StringIO(), io.StringIO()
    code = await run_bulk(
        options(qr_server, owner, key, table, kind="vcard", mapping=VCARD_MAP, progress=False), out=out, err=err
    )
    assert code == 1, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["row", "column", "problem"]
    assert lines[1].split()[0] == "3"
    assert "NAME_REQUIRED" in lines[1]
    assert lines[2].split()[:2] == ["6", "Site"]
    assert "2 of 8 rows are invalid; nothing was created" in err.getvalue()
    assert not (tmp_path / "contacts.zip").exists()

    out = io.StringIO()
    code = await run_bulk(
        options(qr_server, owner, key, table, kind="vcard", mapping=VCARD_MAP, validate_only=True, progress=False),
        out=out,
        err=err,
    )
    assert code == 1
    assert "6 of 8 rows are valid" in out.getvalue()


async def test_valid_rows_become_codes_and_a_zip_that_decodes(
    qr_server: Server, owner: Account, key: str, tmp_path: Path
) -> None:
    table = tmp_path / "contacts.csv"
    rows = write_contacts(table, broken=True)
    archive, manifest = tmp_path / "codes.zip", tmp_path / "manifest.csv"
    out, err = io.StringIO(), io.StringIO()
    code = await run_bulk(
        options(
            qr_server,
            owner,
            key,
            table,
            kind="vcard",
            mapping=VCARD_MAP,
            skip_invalid=True,
            name_template="{Last name}-{row}",
            out=archive,
            manifest=manifest,
        ),
        out=out,
        err=err,
    )
    assert code == 0, err.getvalue()
    assert "2 invalid rows skipped; 6 codes to create" in out.getvalue()
    assert "100%" in err.getvalue()  # the progress bar reached the end
    with zipfile.ZipFile(archive) as zipped:
        images = sorted(n for n in zipped.namelist() if n.endswith(".png"))
        expected = sorted(f"Ångström-{i}-{i}.png" for i in (1, 2, 4, 5, 7, 8))
        assert images == expected
        for number in (1, 2, 8):
            payload = decode_png(zipped.read(f"Ångström-{number}-{number}.png"))
            assert len(payload) == 1
            card = payload[0]
            assert card.startswith("BEGIN:VCARD")
            assert f"FN:{rows[number - 1]['First name']} Ångström-{number}" in card
            assert f"EMAIL:zoe{number}@example.com" in card
            if number == 2:
                assert "URL:https://example.com/zoe" in card
    listed = list(csv.DictReader(io.StringIO(manifest.read_text(encoding="utf-8-sig"), newline="")))
    assert [int(line["row"]) for line in listed] == [1, 2, 4, 5, 7, 8]
    assert all(line["qr_code"].startswith(owner.organization + "/qrCodes/") for line in listed)


async def test_url_rows_with_a_design_as_svg(qr_server: Server, owner: Account, key: str, tmp_path: Path) -> None:
    table = tmp_path / "links.csv"
    table.write_text("name,link\n" + "".join(f"p{i},https://example.com/p/{i}\n" for i in range(1, 6)))
    design = tmp_path / "design.json"
    design.write_text('{"foreground": "#1A237E", "errorCorrection": "H"}')
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    argv = ["bulk", str(table), "--kind", "url", "--map", "link=url.url", "--design", str(design)]
    args = parser.parse_args([*argv, "--format", "svg", "--name-template", "{name}", "--no-progress"])
    environ = {
        "QRMESH_ORGANIZATION": owner.organization,
        "QRMESH_API_KEY": key,
        "QRMESH_ADDR": f"127.0.0.1:{qr_server.port}",
    }
    out, err = io.StringIO(), io.StringIO()
    code = await run_bulk(options_from_args(args, environ), out=out, err=err)
    assert code == 0, err.getvalue()
    with zipfile.ZipFile(tmp_path / "links.zip") as zipped:
        svgs = sorted(n for n in zipped.namelist() if n.endswith(".svg"))
        assert svgs == [f"p{i}.svg" for i in range(1, 6)]
        assert b"<svg" in zipped.read("p1.svg")


async def test_json_rows_of_wifi_networks(qr_server: Server, owner: Account, key: str, tmp_path: Path) -> None:
    rows = tmp_path / "networks.json"
    rows.write_text(
        '[{"ssid": "Cafe Guest", "password": "correct horse", "hidden": false},'
        ' {"ssid": "Lobby", "password": "battery staple", "hidden": true}]'
    )
    out, err = io.StringIO(), io.StringIO()
    bulk = options(
        qr_server,
        owner,
        key,
        rows,
        kind="wifi",
        mapping={"ssid": "ssid", "password": "password", "hidden": "hidden"},
        constants={"security": "WPA"},
        name_template="{ssid}",
        progress=False,
    )
    code = await run_bulk(bulk, out=out, err=err)
    assert code == 0, err.getvalue()
    with zipfile.ZipFile(tmp_path / "networks.zip") as zipped:
        assert decode_png(zipped.read("Cafe Guest.png")) == ["WIFI:T:WPA;S:Cafe Guest;P:correct horse;;"]
        assert decode_png(zipped.read("Lobby.png")) == ["WIFI:T:WPA;S:Lobby;P:battery staple;H:true;;"]


async def test_request_errors_name_what_is_wrong(qr_server: Server, owner: Account, key: str, tmp_path: Path) -> None:
    table = tmp_path / "links.csv"
    table.write_text("link\nhttps://example.com\n")
    err = io.StringIO()
    code = await run_bulk(
        options(qr_server, owner, key, table, kind="url", mapping={"Nope": "url.url"}, progress=False),
        out=io.StringIO(),
        err=err,
    )
    assert code == 2
    assert "INVALID_ARGUMENT" in err.getvalue()
    assert '"Nope"' in err.getvalue()

    code = await run_bulk(
        options(qr_server, owner, "not-a-key", table, kind="url", mapping={"link": "url.url"}, progress=False),
        out=io.StringIO(),
        err=err,
    )
    assert code == 1
    assert "UNAUTHENTICATED" in err.getvalue()

    big = tmp_path / "big.csv"
    with big.open("w") as out:
        out.write("link\n")
        line = "https://example.com/" + "x" * 1000 + "\n"
        out.writelines(line for _ in range(17 * 1024))  # 17 MiB: over the server's 16 MiB receive limit
    err = io.StringIO()
    code = await run_bulk(
        options(qr_server, owner, key, big, kind="url", mapping={"link": "url.url"}, progress=False),
        out=io.StringIO(),
        err=err,
    )
    assert code == 2
    assert "at most 16 MiB" in err.getvalue()
    assert "split the table" in err.getvalue()


async def test_through_the_edge(edge: str, tmp_path: Path) -> None:
    """Native gRPC through Envoy: the upload, the progress stream and the streamed ZIP."""
    address = edge.removeprefix("http://")
    async with grpc.aio.insecure_channel(address) as channel:
        account = await sign_up(channel, "bulk-cli-edge")
        subscribe_through_edge(edge, account.organization, "business")
        secret = await api_key(channel, account, "qr:write", "qr:read")
    table = tmp_path / "links.csv"
    table.write_text("link\n" + "".join(f"https://example.com/e/{i}\n" for i in range(1, 20)) + "ftp://nope\n")
    out, err = io.StringIO(), io.StringIO()
    bulk = BulkOptions(
        file=table,
        organization=account.organization,
        address=address,
        api_key=secret,
        kind="url",
        mapping={"link": "url.url"},
        skip_invalid=True,
    )
    code = await run_bulk(bulk, out=out, err=err)
    assert code == 0, err.getvalue()
    assert "1 invalid rows skipped; 19 codes to create" in out.getvalue()
    assert "100%" in err.getvalue()
    with zipfile.ZipFile(tmp_path / "links.zip") as zipped:
        images = [n for n in zipped.namelist() if n.endswith(".png")]
        assert len(images) == 19
        assert decode_png(zipped.read("7.png")) == ["https://example.com/e/7"]


def test_options_need_an_organization_credentials_and_a_mapping(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("a\nb\n")
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    base = {"QRMESH_ORGANIZATION": "organizations/x", "QRMESH_API_KEY": "k"}
    for argv, environ, message in [
        (["bulk", str(table), "--kind", "url", "--map", "a=url.url"], {"QRMESH_API_KEY": "k"}, "organization"),
        (["bulk", str(table), "--kind", "url", "--map", "a=url.url"], {"QRMESH_ORGANIZATION": "o"}, "credentials"),
        (["bulk", str(table), "--map", "a=url.url"], base, "payload kind"),
        (["bulk", str(table), "--kind", "url"], base, "map at least one column"),
        (["bulk", str(table), "--kind", "url", "--map", "a"], base, "NAME=VALUE"),
        (["bulk", str(tmp_path / "missing.csv"), "--kind", "url", "--map", "a=url.url"], base, "not a file"),
    ]:
        with pytest.raises(UsageError, match=message):
            options_from_args(parser.parse_args(argv), environ)
    parsed = options_from_args(parser.parse_args(["bulk", str(table), "--kind", "url", "--map", "a=url.url"]), base)
    assert parsed.organization == "organizations/x"
    assert parsed.metadata() == (("x-api-key", "k"),)
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    argv = ["bulk", str(table), "--kind", "url", "--map", "a=url.url", "--api-key-file", str(secret)]
    parsed = options_from_args(parser.parse_args(argv), {"QRMESH_ORGANIZATION": "o"})
    assert parsed.organization == "organizations/o"
    assert parsed.metadata() == (("x-api-key", "from-a-file"),)
    parsed = options_from_args(parser.parse_args(argv[:-2]), {"QRMESH_ORGANIZATION": "o", "QRMESH_TOKEN": "t"})
    assert parsed.metadata() == (("authorization", "Bearer t"),)
