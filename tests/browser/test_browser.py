"""End to end: the app served by ``streamlit run``, driven in headless Debian Chromium.

Set BCCLASSIFY_SCREENSHOTS to a folder to save a screenshot of every page there (the README's
screenshots come from this test, e.g. BCCLASSIFY_SCREENSHOTS=docs/screenshots). The app serves the
tiny test store, whose models are untrained; set BCCLASSIFY_SCREENSHOTS_STORE to a real store
(e.g. model_store) to take the screenshots, and the upload timings it prints, with trained models
instead.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

from bcclassify import CLASS_LABELS
from bcclassify.access import accounts
from bcclassify.access.roles import Role
from bcclassify.cli.app_server import served_app, time_classification

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
EXAMPLE = REPO / "bcclassify" / "examples" / "pbc" / "lymphocyte" / "LY_107981.jpg"
SECOND_EXAMPLE = REPO / "bcclassify" / "examples" / "pbc" / "eosinophil" / "EO_104169.jpg"
EXAMPLES = REPO / "bcclassify" / "examples" / "pbc"
PAGES = {  # sidebar link -> screenshot name and a heading the page always shows
    "Training runs": ("training_runs", "Training runs"),
    "Confusion matrices": ("confusion_matrices", "Confusion matrices"),
    "Per-class metrics": ("per_class_metrics", "Per-class metrics"),
    "Model comparison": ("model_comparison", "Model comparison"),
}
SLOW_MS = 240_000  # first classification loads TensorFlow and builds the Grad-CAM model
REVIEWER, PASSWORD = "qa.reviewer", "browser test password"


def _adapt_store(tiny_store, tmp_path) -> Path | None:
    """The store the test's server uses when it may install models into it: a copy of the tiny
    store (the session's own is shared), or None when a real store is served for screenshots."""
    if os.environ.get("BCCLASSIFY_SCREENSHOTS_STORE"):
        return None
    copy = tmp_path / "store"
    if not copy.exists():
        shutil.copytree(tiny_store, copy)
    return copy


@pytest.fixture()
def app_url(tiny_store, tmp_path):
    """The app served on a free local port for one test; the server is always stopped."""
    store = _adapt_store(tiny_store, tmp_path)
    env = {
        **os.environ,
        "BCCLASSIFY_STORE": os.environ.get("BCCLASSIFY_SCREENSHOTS_STORE") or str(store),
        "BCCLASSIFY_DATA_DIR": str(tmp_path / "data"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "BCCLASSIFY_PRELOAD": "1",  # as a user's server: the default loads when the page opens
    }
    # The README's quick start: `python app.py`, which serves it with streamlit.
    with served_app(env, tmp_path / "streamlit.log", timeout_s=90) as url:
        yield url


def _wait_until_drawn(page) -> None:
    """Wait for the script run to finish and its tables (canvas grids) to be on screen."""
    running = page.locator('[data-testid="stStatusWidgetRunningIcon"]')
    running.wait_for(state="detached", timeout=SLOW_MS)
    # A grid is a thin empty bar until its data arrives; a drawn one has at least a header row.
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stDataFrame\"]')]"
        ".every(grid => grid.getBoundingClientRect().height > 60)",
        timeout=60_000,
    )
    page.wait_for_timeout(3000)  # plotly and the grids paint after their elements appear


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("BCCLASSIFY_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian chromium not installed")
def test_upload_classify_review_and_open_every_page(app_url, tmp_path, tiny_store):
    sync_api = pytest.importorskip("playwright.sync_api")
    data_dir = tmp_path / "data"
    # An admin: the same log-in reviews on Classify and adapts and installs on Adapt.
    accounts.add_user(data_dir / "accounts.json", REVIEWER, PASSWORD, role=Role.ADMIN)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(app_url)
            page.get_by_role("heading", name="Classify blood cells").wait_for(timeout=60_000)

            # Anonymous: classifies and explains, but cannot save a decision.
            to_result, to_maps, answer = time_classification(page, EXAMPLE, SLOW_MS)
            print(
                f"\nupload -> result {to_result:.1f} s, upload -> maps {to_maps:.1f} s "
                "(first use: includes loading TensorFlow and the model)"
            )
            assert any(name in answer for name in [*CLASS_LABELS.values(), "Unidentified"])
            overlays = page.locator('[data-testid="stImage"] img')
            # The cell, then its overlays (the hybrid: both trunk maps and the fused one).
            assert overlays.count() >= 3
            page.get_by_text("Log in (sidebar) to confirm or correct").wait_for(timeout=60_000)
            assert not page.get_by_role("button", name="Save decision (confirm or correct)").count()

            # A second upload in the same session, the model already loaded: what a user meets
            # from the second cell on (reported, not asserted: timings belong to benchmarks).
            _wait_until_drawn(page)
            page.locator('[data-testid="stFileChipDeleteBtn"]').first.click()
            page.get_by_text("Upload one or more cell images").wait_for(timeout=60_000)
            _wait_until_drawn(page)
            started = time.monotonic()
            page.locator('input[type="file"]').first.set_input_files(str(SECOND_EXAMPLE))
            shown_name = page.locator('[data-testid="stText"]')  # the name under the cell
            shown_name.filter(has_text=SECOND_EXAMPLE.name).wait_for(timeout=SLOW_MS)
            to_result = time.monotonic() - started
            # The first upload's maps went with it, so a fused map on screen is this cell's. (Not
            # the running icon: a warm run can end its classification before the icon is drawn.)
            page.get_by_text("· Fused").first.wait_for(timeout=SLOW_MS)
            to_maps = time.monotonic() - started
            print(f"second upload -> result {to_result:.1f} s, -> maps {to_maps:.1f} s (warm)")
            page.locator('[data-testid="stStatusWidgetRunningIcon"]').wait_for(
                state="detached", timeout=SLOW_MS
            )
            assert not shown_name.filter(has_text=EXAMPLE.name).count()
            # The overlays are real, decoded images (scrolled into view: images load lazily).
            page.get_by_text("· Fused").first.scroll_into_view_if_needed()
            page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
                ".every(img => img.complete && img.naturalWidth > 0)",
                timeout=30_000,
            )
            page.mouse.wheel(0, -10_000)
            page.wait_for_timeout(1000)  # let plotly finish drawing before the screenshot
            _screenshot(page, "classify")

            # Log in as a reviewer (a local account) and save a decision under that name.
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_label("User name").fill(REVIEWER)
            sidebar.get_by_label("Password", exact=True).fill(PASSWORD)
            sidebar.get_by_role("button", name="Log in").click()
            sidebar.get_by_text(f"Logged in as {REVIEWER}").wait_for(timeout=60_000)
            save = page.get_by_role("button", name="Save decision (confirm or correct)")
            save.wait_for(timeout=60_000)
            save.click()
            page.get_by_text("saved.").first.wait_for(timeout=60_000)
            with sqlite3.connect(data_dir / "reviews.sqlite3") as db:
                rows = db.execute("SELECT file_name, reviewer FROM reviews").fetchall()
            assert rows == [(SECOND_EXAMPLE.name, REVIEWER)]

            # Adapt to your lab: a zip of class folders in, before/after figures, install.
            store = _adapt_store(tiny_store, tmp_path)
            if store is not None:
                lab_zip = tmp_path / "lab.zip"
                with zipfile.ZipFile(lab_zip, "w") as archive:
                    for cell in sorted(EXAMPLES.glob("*/*.jpg")):
                        archive.write(cell, f"{cell.parent.name}/{cell.name}")
                page.get_by_role("link", name="Adapt to your lab").click()
                page.get_by_role("heading", name="Adapt to your lab").first.wait_for(timeout=60_000)
                _wait_until_drawn(page)
                name_box = page.get_by_label("Name of the adapted model")
                name_box.fill("browser-lab")
                name_box.press("Enter")
                per_class = page.get_by_label("Cells a class to fit on")
                per_class.fill("1")
                per_class.press("Enter")
                _wait_until_drawn(page)
                page.locator('input[type="file"]').first.set_input_files(str(lab_zip))
                page.get_by_role("button", name="Adapt").click()
                page.get_by_text("browser-lab: adapted from").wait_for(timeout=SLOW_MS)
                assert not (store / "models" / "browser-lab").exists()  # not before Install
                page.get_by_role("button", name="Install this model").click()
                page.get_by_text("Installed browser-lab").wait_for(timeout=60_000)
                card = store / "models" / "browser-lab" / "card.json"
                assert card.is_file() and "cells_sha256" in card.read_text()
                _screenshot(page, "adapt_to_your_lab")

            for link, (name, heading_text) in PAGES.items():
                page.get_by_role("link", name=link).click()
                page.get_by_role("heading", name=heading_text).first.wait_for(timeout=60_000)
                _wait_until_drawn(page)
                assert not page.locator('[data-testid="stException"]').count(), link
                _screenshot(page, name)
            # Tables are drawn on a canvas, so check the reference section's heading instead.
            assert page.get_by_text("Reference results (published, not measured here)").count()
        finally:
            browser.close()
