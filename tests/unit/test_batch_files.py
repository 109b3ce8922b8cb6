"""File names, manifest lines and the streamed ZIP of a batch's outputs."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime

import pytest

from qrmesh.qr.domain import batch_files


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ångström, Zoë", "Ångström, Zoë"),
        ("../../etc/passwd", "_._etc_passwd"),
        ('a/b\\c:d*e?f"g<h>i|j', "a_b_c_d_e_f_g_h_i_j"),
        ("tab\there\nnew\x00line\x7f", "tabherenewline"),
        ("  . spaced .  ", "spaced"),
        ("...", "7"),
        ("", "7"),
        ("CON", "CON_7"),
        ("nul.txt", "nul_7.txt"),
        ("CON.tar", "CON_7.tar"),
        ("com1.x", "com1_7.x"),
        ("Lpt9 .tar.gz", "Lpt9_7.tar.gz"),
        ("conin$", "conin$_7"),
        ("console.txt", "console.txt"),
        ("com10.x", "com10.x"),
        ("x" * 300, "x" * batch_files.MAX_NAME),
        ("right\u202eleft", "rightleft"),
    ],
)
def test_names_are_made_safe(text: str, expected: str) -> None:
    assert batch_files.safe_name(text, 7) == expected


def test_device_names_with_an_extension_are_changed_in_file_names() -> None:
    names = batch_files.file_names("{n}", [(7, {"n": "nul.txt"}), (8, {"n": "AUX.csv"}), (9, {"n": "auxiliary"})])
    assert names == ["nul_7.txt", "AUX_8.csv", "auxiliary"]
    assert all(name.split(".")[0].lower() not in {"nul", "aux"} for name in names)


def test_templates_fill_columns_and_the_row_and_names_stay_unique() -> None:
    rows = [(1, {"last": "Smith"}), (2, {"last": "smith"}), (3, {"last": "Smith"}), (4, {"last": ""})]
    assert batch_files.file_names("{last}", rows) == ["Smith", "smith-2", "Smith-3", "4"]
    assert batch_files.file_names("{last}-{row}", rows) == ["Smith-1", "smith-2", "Smith-3", "-4"]
    assert batch_files.file_names("", rows) == ["1", "2", "3", "4"]
    assert batch_files.check_template("{last}-{row}-{nope}", ["last"]) == ["nope"]


def test_display_names_fall_back_to_the_file_name() -> None:
    assert batch_files.display_name("", "file", {}, 1) == "file"
    assert batch_files.display_name("{a} {row}", "file", {"a": "Poster\nA"}, 3) == "PosterA 3"


def test_manifest_cells_cannot_run_as_formulas() -> None:
    line = batch_files.manifest_line([1, '=HYPERLINK("x")', "+1", "plain", "-x"])
    assert line == b'1,"\'=HYPERLINK(""x"")",\'+1,plain,\'-x\r\n'
    assert batch_files.manifest_header().startswith(b"\xef\xbb\xbfrow,qr_code,short_url,payload,file_name")


def test_the_zip_is_written_as_a_stream_and_reads_back() -> None:
    archive = batch_files.ZipStream(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    chunks = []
    archive.add("a.png", b"\x89PNG" + b"\x00" * 1000)
    archive.add("b.svg", b"<svg>" + b"a" * 1000 + b"</svg>")
    chunks.append(archive.take())
    entry = archive.open("manifest.csv")
    entry.write(batch_files.manifest_header())
    entry.write(batch_files.manifest_line([1, "x", "", "p", "a.png"]))
    entry.close()
    chunks.append(archive.take())
    chunks.append(archive.close())
    read = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert read.testzip() is None
    assert read.namelist() == ["a.png", "b.svg", "manifest.csv"]
    assert read.getinfo("a.png").compress_type == zipfile.ZIP_STORED
    assert read.getinfo("b.svg").compress_type == zipfile.ZIP_DEFLATED
    assert read.read("a.png").startswith(b"\x89PNG")
    assert read.read("manifest.csv").endswith(b"a.png\r\n")
