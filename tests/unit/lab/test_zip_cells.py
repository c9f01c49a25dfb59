"""The Adapt page's zip of labelled cells (read_zip_cells): the per-upload pixel cap on every
member, damaged, encrypted and oddly compressed members named, every entry counted, names unique."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
from helpers import ACCEPTED, huge_png_header

from bcclassify.lab import adapt
from bcclassify.lab.adapt import AdaptError, read_zip_cells

CELL = ACCEPTED["png"]()


def _zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _patched(data: bytes, member: str, offsets: dict[int, int], width: str = "<H") -> bytes:
    """``data`` with the fields at ``offsets`` (from the start of both of ``member``'s headers:
    local and central) set to the given values."""
    out = bytearray(data)
    name = member.encode()
    for signature, name_at in ((b"PK\x03\x04", 30), (b"PK\x01\x02", 46)):
        start = out.find(signature)
        while out[start + name_at : start + name_at + len(name)] != name:
            start = out.find(signature, start + 4)
        for offset, value in offsets.items():
            struct.pack_into(width, out, start + offset + (name_at == 46) * 2, value)
    return bytes(out)


GOOD = [("mylab/neutrophil/a.png", CELL), ("mylab/lymphocyte/b.png", CELL)]


def test_a_good_zip_gives_its_cells_by_class():
    assert read_zip_cells(_zip(GOOD)) == {
        "lymphocyte": [("lymphocyte/b.png", CELL)],
        "neutrophil": [("neutrophil/a.png", CELL)],
    }


def test_every_member_is_held_to_the_per_upload_pixel_cap(monkeypatch):
    """The loader alone allows 90 MP; a zipped 36 MP image must meet the app's 25 MP cap too."""
    field = huge_png_header(6000, 6000)
    data = _zip([*GOOD, ("mylab/neutrophil/field.png", field)])
    with pytest.raises(AdaptError, match=r"mylab/neutrophil/field.png: 6000x6000 px is over"):
        read_zip_cells(data)
    monkeypatch.setenv("BCCLASSIFY_MAX_UPLOAD_PIXELS", "40000000")  # the same setting
    assert len(read_zip_cells(data)["neutrophil"]) == 2
    with pytest.raises(AdaptError, match="a.png: 64x60 px is over"):
        read_zip_cells(_zip(GOOD), max_pixels=1000)


def test_a_damaged_member_is_named():
    data = _zip(GOOD, method=zipfile.ZIP_STORED)
    at = data.index(CELL[40:80])  # inside a.png's stored bytes
    damaged = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    with pytest.raises(AdaptError, match=r"1 file\(s\) .*\n.*neutrophil/a.png: damaged .*CRC"):
        read_zip_cells(damaged)


def test_an_encrypted_member_is_named():
    data = _patched(_zip(GOOD), "mylab/lymphocyte/b.png", {6: 1}, "<H")  # flag bit 0: encrypted
    with pytest.raises(AdaptError, match="lymphocyte/b.png: encrypted; zip the cells without"):
        read_zip_cells(data)


def test_an_unsupported_compression_method_is_named():
    data = _patched(_zip(GOOD), "mylab/neutrophil/a.png", {8: 99})  # 99: AES, not readable
    with pytest.raises(AdaptError, match=r"neutrophil/a.png: compressed with a method .*99"):
        read_zip_cells(data)


def test_every_bad_member_is_named_in_one_message():
    bad = [(f"mylab/basophil/{i}.png", huge_png_header(6000, 6000)) for i in range(12)]
    with pytest.raises(AdaptError, match=r"12 file\(s\)[^$]*9.png[^$]*and 2 more") as caught:
        read_zip_cells(_zip([*GOOD, *bad]))
    assert str(caught.value).count("over this app's limit") == 10


def test_hidden_and_macos_entries_count_toward_the_member_limit(monkeypatch):
    monkeypatch.setattr(adapt, "MAX_ZIP_FILES", 4)
    clutter = [("__MACOSX/mylab/._a.png", b"x"), ("mylab/.DS_Store", b"x"), ("mylab/._b", b"x")]
    with pytest.raises(AdaptError, match="6 entries, more than 4 .*__MACOSX"):
        read_zip_cells(_zip([*GOOD, *clutter, ("mylab/neutrophil/c.png", CELL)]))
    assert len(read_zip_cells(_zip([*GOOD, *clutter[:2]]))) == 2  # 4 entries: allowed, skipped


def test_a_name_given_twice_is_refused():
    """Two members of one name used to become one cell with one checksum on the card."""
    twice = [*GOOD, ("mylab/neutrophil/a.png", ACCEPTED["jpeg"]())]
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = _zip(twice)
    with pytest.raises(AdaptError, match=r"1 name\(s\) more than once.*\n.*neutrophil/a.png"):
        read_zip_cells(data)
    with pytest.raises(AdaptError, match="more than once"):  # the same name once stripped
        read_zip_cells(_zip([*GOOD, ("mylab/neutrophil//a.png", CELL)]))


def test_not_a_zip_is_refused():
    with pytest.raises(AdaptError, match="not a readable zip file"):
        read_zip_cells(b"PK\x03\x04 and then nothing")
