"""Issue 10 through Envoy, REST only: a CSV with a broken row is refused with its row errors, then created
with the valid rows; progress streams through the transcoder until DONE, the row errors page, and the ZIP
downloads with images that decode to their rows' URLs and a manifest."""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
import zipfile
from typing import Any

import httpx
import pytest
import zxingcpp
from PIL import Image

from tests.e2e.test_analytics_flow import JsonArrayReader
from tests.e2e.test_identity_flow import sign_up_and_login
from tests.integration.billing_helpers import subscribe_through_edge


@pytest.fixture(scope="module")
def owner(edge: str) -> tuple[dict[str, str], str]:
    _, headers = sign_up_and_login(edge, "bulk")
    org = httpx.post(f"{edge}/v1/organizations", json={"displayName": "Bulk Inc"}, headers=headers)
    assert org.status_code == 200, org.text
    name: str = org.json()["name"]
    subscribe_through_edge(edge, name, "business")
    return headers, name


def sheet(count: int) -> tuple[str, list[str]]:
    token = secrets.token_hex(3)
    links = [f"https://example.com/{token}/{i}" for i in range(count)]
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";")
    writer.writerow(["Name", "Link"])
    for i, link in enumerate(links):
        writer.writerow([f"Poster {i}", "ftp://not-web" if i == 2 else link])
    return out.getvalue(), links


async def test_a_batch_through_the_edge(edge: str, owner: tuple[dict[str, str], str]) -> None:
    headers, org = owner
    text, links = sheet(8)
    body: dict[str, Any] = {
        "batch": {
            "displayName": "posters",
            "spec": {
                "payloadKind": "URL",
                "mapping": {"Link": "url.url"},
                "fileNameTemplate": "{Name}",
                "format": "PNG",
            },
        },
        "csvText": text,
    }
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        refused = await client.post(f"{edge}/v1/{org}/batches", json=body)
        assert refused.status_code == 400, refused.text
        details = refused.json()["details"]
        assert any(d.get("reason") == "INVALID_ROWS" for d in details)
        bad = next(d for d in details if "fieldViolations" in d)["fieldViolations"]
        assert [v["field"] for v in bad] == ["rows[3].Link"]

        created = await client.post(f"{edge}/v1/{org}/batches", json={**body, "skipInvalidRows": True})
        assert created.status_code == 200, created.text
        batch = created.json()
        assert (batch["totalRows"], batch["validRows"], batch["invalidRows"]) == (8, 7, 1)

        states: list[dict[str, Any]] = []
        # Bounded: a batch that never ends (heartbeats every 15 s) fails the test instead of hanging the run.
        async with asyncio.timeout(120), client.stream("GET", f"{edge}/v1/{batch['name']}:watch") as stream:
            assert stream.status_code == 200
            reader = JsonArrayReader(stream.aiter_text())
            while not states or states[-1]["state"] not in ("DONE", "FAILED", "CANCELED"):
                states.append(await reader.next())
        assert states[-1]["state"] == "DONE"
        assert states[-1]["processedRows"] == 7

        errors = await client.get(f"{edge}/v1/{batch['name']}/rowErrors")
        assert errors.status_code == 200, errors.text
        assert [(e["row"], e["column"]) for e in errors.json()["rowErrors"]] == [(3, "Link")]

        download = await client.get(f"{edge}/v1/{batch['name']}:download")
        assert download.status_code == 200, download.text[:200]
        assert download.headers["content-type"] == "application/zip"
        manifest = await client.get(f"{edge}/v1/{batch['name']}:downloadManifest")
        assert manifest.status_code == 200
        assert manifest.headers["content-type"].startswith("text/csv")

    archive = zipfile.ZipFile(io.BytesIO(download.content))
    assert sorted(archive.namelist()) == sorted([f"Poster {i}.png" for i in range(8) if i != 2] + ["manifest.csv"])
    for i in (0, 7):
        image = Image.open(io.BytesIO(archive.read(f"Poster {i}.png")))
        assert zxingcpp.read_barcodes(image)[0].text == links[i]
    lines = list(csv.reader(io.StringIO(manifest.content.decode("utf-8-sig"))))
    assert len(lines) == 8
