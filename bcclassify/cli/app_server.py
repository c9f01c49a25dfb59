"""The web app served from a child process on a free loopback port, until the block ends.

What the browser tests and ``scripts/measure_first_upload.py`` start: ``python app.py`` (the
README's quick start, which loads the model while the server starts) or ``streamlit run
app.py``, headless, with no file watcher and no usage statistics.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from bcclassify import REPO_ROOT

__all__ = ["APP", "free_port", "served_app", "stop_process", "time_classification", "wait_healthy"]

APP = REPO_ROOT / "app.py"


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    """Return once ``url``'s Streamlit health check answers; raise if the server exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


@contextmanager
def served_app(
    env: Mapping[str, str],
    log: Path,
    launch: str = "python",
    flags: Sequence[str] = (),
    timeout_s: float = 120,
    port: int | None = None,
) -> Iterator[str]:
    """Serve the app with ``env`` (stdout and stderr into ``log``) and yield its URL once healthy.

    ``launch``: "python" for ``python app.py``, "streamlit" for ``streamlit run app.py``;
    ``flags``: more Streamlit flags; ``port``: the port to serve on (a free one by default: pass
    one when the flags must name the URL beforehand). The server is always stopped when the
    block ends.
    """
    port = port or free_port()
    command = [sys.executable, str(APP)] if launch == "python" else [
        sys.executable, "-m", "streamlit", "run", str(APP),
    ]  # fmt: skip
    command += [
        "--server.headless", "true", "--server.port", str(port),
        "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false", *flags,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, cwd=REPO_ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_healthy(url, server, timeout_s)
            yield url
        finally:
            stop_process(server)


def stop_process(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """Ask ``process`` to stop, and kill it when it has not within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def time_classification(page, image: Path, timeout_ms: float) -> tuple[float, float, str]:
    """Upload ``image`` on the Classify page open in ``page`` (a Playwright page): the seconds
    until the answer's heading shows, until the fused saliency map does, and the heading."""
    from bcclassify import CLASS_LABELS

    started = time.monotonic()
    page.locator('input[type="file"]').first.set_input_files(str(image))
    labels = re.compile("|".join([*CLASS_LABELS.values(), "Unidentified"]))
    heading = page.get_by_role("heading", level=3).filter(has_text=labels).first
    heading.wait_for(timeout=timeout_ms)
    to_result = time.monotonic() - started
    page.get_by_text("· Fused").first.wait_for(timeout=timeout_ms)
    return to_result, time.monotonic() - started, heading.inner_text()
