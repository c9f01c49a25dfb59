"""Upload caps in the running app (streamlit.testing): the file count and the per-file size are
applied before any file is read, a busy decoder is a try-again note with nothing cached, and the
Adapt page parses an uploaded zip once."""

from __future__ import annotations

import threading

from streamlit.runtime.uploaded_file_manager import UploadedFile
from streamlit.testing.v1 import AppTest
from test_adapt_page import PAGE, _zip
from test_app import (
    APP,
    EXAMPLES,
    PASSWORD,
    TIMEOUT,
    _frame,
    _log_in,
    _no_exception,
    _start,
    _texts,
)

import ui.adapt
from bcclassify.access import accounts
from bcclassify.access.roles import Role
from bcclassify.data import imaging
from bcclassify.data.imaging import decode_slot


def _read_names(monkeypatch) -> list[str]:
    """The names of the uploaded files whose bytes the app asks for, in order."""
    read: list[str] = []
    getvalue = UploadedFile.getvalue

    def recorded(self):
        read.append(self.name)
        return getvalue(self)

    monkeypatch.setattr(UploadedFile, "getvalue", recorded)
    return read


def test_files_beyond_the_count_or_over_the_size_cap_are_never_read(
    tiny_store, tmp_path, monkeypatch
):
    monkeypatch.setenv("BCCLASSIFY_MAX_FILES", "3")
    monkeypatch.setenv("BCCLASSIFY_MAX_FILE_MB", "1")
    at = _start(monkeypatch, tmp_path / "data")
    at.selectbox(key="model").set_value("tiny-cnn").run()
    cells = sorted(EXAMPLES.rglob("*.jpg"))[:5]
    files = [("=huge.png", b"\x89PNG" + b"\0" * (2 * 2**20), "image/png")]  # 2 MB
    files += [(p.name, p.read_bytes(), "image/jpeg") for p in cells]
    assert at.file_uploader(key="uploads").proto.max_upload_size_mb == 1  # the browser's check
    read = _read_names(monkeypatch)
    at.file_uploader(key="uploads").set_value(files).run()
    _no_exception(at)

    assert set(read) == {p.name for p in cells[:3]}  # the first 3 that fit; nothing else read
    not_read = _frame(at, "reason")
    assert list(not_read["file"]) == ["=huge.png"]  # named (as plain table text)
    assert "over this app's limit of 1 MB" in not_read["reason"][0]
    assert "2 were left unread" in _texts(at.warning)
    assert "3 of 3 image(s) classified" in _texts(at.success)


def test_a_busy_decoder_says_try_again_and_caches_nothing(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setattr(imaging, "DECODE_WAIT_S", 0.2)
    at = _start(monkeypatch, tmp_path / "data")
    at.selectbox(key="model").set_value("tiny-cnn").run()
    release, held = threading.Event(), threading.Barrier(imaging.DECODE_SLOTS + 1)

    def hold():
        with decode_slot("another session"):
            held.wait()
            release.wait(30)

    holders = [threading.Thread(target=hold) for _ in range(imaging.DECODE_SLOTS)]
    for thread in holders:
        thread.start()
    held.wait()
    try:
        at.multiselect(key="examples").set_value(["basophil/BA_112418.jpg"]).run()
    finally:
        release.set()
        for thread in holders:
            thread.join()
    _no_exception(at)
    assert "busy" in _texts(at.warning) and "try again" in _texts(at.text)
    assert not at.session_state["predictions"]  # nothing cached: the next run classifies

    at.run()
    _no_exception(at)
    assert "busy" not in _texts(at.warning)
    assert len(at.session_state["predictions"]) == 1


def test_the_adapt_page_parses_an_uploaded_zip_once(tiny_store, tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    # The Adapt page is for lab admins (access.roles).
    accounts.add_user(data / "accounts.json", "qa", PASSWORD, role=Role.ADMIN)
    calls = []
    parse = ui.adapt.read_zip_cells
    monkeypatch.setattr(
        ui.adapt, "read_zip_cells", lambda *a, **k: calls.append(1) or parse(*a, **k)
    )
    at = _log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(), "qa")
    at.switch_page(PAGE).run()
    assert at.file_uploader(key="adapt_zip").proto.max_upload_size_mb == 50
    archive = ("lab.zip", _zip(("lymphocyte", "neutrophil")), "application/zip")
    at.file_uploader(key="adapt_zip").set_value(archive).run()
    at.number_input(key="adapt_per_class").set_value(1).run()
    at.number_input(key="adapt_seed").set_value(3).run()
    _no_exception(at)
    assert any("to fit on" in d.value.columns for d in at.dataframe)
    assert len(calls) == 1
