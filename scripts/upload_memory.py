"""Peak memory and time of decoding one upload at the pixel cap, per kind of image (issue 22).

Each image is decoded by ``serving.uploads.working_copy`` in a fresh process, so one image's
peak does not hide another's: ``extra RSS`` is the process's peak resident memory during the
decode minus its resident memory just before (Linux: ``/proc/self/clear_refs`` resets the peak),
``numpy`` the peak of ``tracemalloc`` (numpy arrays; Pillow's own buffers are not traced).

    python scripts/upload_memory.py [--side 5000] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers import encode_image, png16, tiff16  # noqa: E402 - the tests' 16-bit encoders

CHILD = """
import json, sys, time, tracemalloc
from pathlib import Path
from bcclassify.serving.uploads import UploadLimits, working_copy

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
working_copy("warm-up.png", Path(sys.argv[2]).read_bytes(), UploadLimits())
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
before = status("VmRSS")
tracemalloc.start()
start = time.perf_counter()
copy = working_copy("upload", data, UploadLimits(max_pixels=int(sys.argv[3])))
seconds = time.perf_counter() - start
traced = tracemalloc.get_traced_memory()[1]
print(json.dumps({"extra_rss": status("VmHWM") - before, "numpy": traced, "seconds": seconds,
                  "shape": list(copy.pixels.shape)}))
"""


def ramp(side: int, channels: int, top: int) -> np.ndarray:
    """A smooth image (compresses like a real field of view) with values up to ``top``."""
    x = np.linspace(0, top, side)
    planes = [np.add.outer(x * (0.5 + 0.2 * c), x * (0.5 - 0.2 * c)) for c in range(channels)]
    return np.stack(planes, axis=-1).squeeze(-1 if channels == 1 else None)


def cases(side: int) -> dict[str, bytes]:
    eight = ramp(side, 3, 255).astype(np.uint8)
    sixteen = eight.astype(np.uint16) * 257  # full range, compresses like a real field
    return {
        "8-bit RGB PNG": encode_image(Image.fromarray(eight), "PNG"),
        "8-bit grey PNG": encode_image(Image.fromarray(eight[..., 0]), "PNG"),
        "8-bit RGBA PNG": encode_image(
            Image.fromarray(np.dstack([eight, eight[..., :1]]), "RGBA"), "PNG"
        ),
        "16-bit RGB PNG": png16(sixteen),
        "16-bit grey PNG": png16(sixteen[..., 0]),
        "16-bit RGBA PNG": png16(np.dstack([sixteen, sixteen[..., :1]])),
        "16-bit RGB TIFF": tiff16(sixteen),
    }


def measure(data: bytes, max_pixels: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        image, warm = Path(folder) / "image", Path(folder) / "warm.png"
        image.write_bytes(data)
        warm.write_bytes(encode_image(Image.new("RGB", (64, 64)), "PNG"))
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(image), str(warm), str(max_pixels)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=5000, help="square side in px (%(default)s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = {}
    for name, data in cases(args.side).items():
        rows[name] = {"file_kb": len(data) // 1024, **measure(data, args.side * args.side)}
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"| {args.side}x{args.side} upload | file | extra RSS | numpy (traced) | time |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['file_kb']} kB | {row['extra_rss'] / 2**20:.0f} MB "
            f"| {row['numpy'] / 2**20:.0f} MB | {row['seconds']:.1f} s |"
        )


if __name__ == "__main__":
    main()
