"""Time the first upload on a fresh app server, as a user meets it (#24's start-up targets).

Starts the app on a free local port (``python app.py``, which loads the default model while the
server starts, or ``streamlit run app.py``, which loads it when the first session opens), opens
the Classify page in headless Debian Chromium as soon as the server answers, uploads one bundled
example cell (at once, or ``--think-s`` seconds later) and reports, as JSON, the seconds from
process start to a healthy server and to the page, and from the upload to the result heading and
to the fused Grad-CAM map. Needs the dev requirements (Playwright) and /usr/bin/chromium.

    python scripts/measure_first_upload.py --launch python --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bcclassify.cli.app_server import served_app, time_classification  # noqa: E402

EXAMPLE = REPO / "bcclassify" / "examples" / "pbc" / "lymphocyte" / "LY_107981.jpg"
CHROMIUM = "/usr/bin/chromium"
LIMIT_MS = 300_000


def one_fresh_server(
    launch: str, store: Path, log_dir: Path, think_s: float = 0.0
) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    env = {
        **os.environ,
        "BCCLASSIFY_STORE": str(store),
        "BCCLASSIFY_DATA_DIR": str(log_dir / "data"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    started = time.monotonic()
    log = log_dir / f"app-{time.time_ns()}.log"
    with served_app(env, log, launch, timeout_s=120) as url:
        healthy = time.monotonic() - started
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(url)
            page.get_by_role("heading", name="Classify blood cells").wait_for(timeout=LIMIT_MS)
            page_open = time.monotonic() - started
            time.sleep(think_s)  # a user choosing a file
            to_result, to_maps, _ = time_classification(page, EXAMPLE, LIMIT_MS)
            browser.close()
    return {
        "start_to_healthy_s": round(healthy, 2),
        "start_to_page_s": round(page_open, 2),
        "upload_to_result_s": round(to_result, 2),
        "upload_to_maps_s": round(to_maps, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launch", choices=["python", "streamlit"], default="python")
    parser.add_argument("--store", default=str(REPO / "model_store"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--think-s",
        type=float,
        default=0.0,
        help="seconds between the page showing and the upload (a user choosing a file)",
    )
    parser.add_argument(
        "--logs", default=None, help="keep each server's log (its preload timings) in this folder"
    )
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(args.logs) if args.logs else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for _ in range(args.repeat):
            runs.append(one_fresh_server(args.launch, Path(args.store), logs, args.think_s))
            print(json.dumps(runs[-1]), file=sys.stderr)
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    report = {"launch": args.launch, "think_s": args.think_s, "runs": runs, "median": medians}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
