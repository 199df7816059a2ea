"""What a visitor downloads: the explorer, the receiver and /docs, on a first and a repeat visit.

    .venv/bin/python bench/bench_first_visit.py [--results bench/results]

Starts `latentz serve` on loopback and opens each page in headless Chromium with an empty
profile (a fresh user-data folder, so the disk cache starts empty), waits until the page is ready
and the network is idle, then opens it again in the same profile: the repeat visit. Bytes are the
DevTools protocol's ``encodedDataLength`` per request (headers and body as they came over the
wire, 0 for an answer from the cache; `tests/chromium.py`'s NetworkMeter), so they are the same on
every run for the same files: no timing is involved.

- explorer: `/explorer` until the model (`mnist-z10` first) is loaded and its average image shown;
- receiver: `/receiver`, then a 28-byte `.latentz` digit (a held-out MNIST digit through
  `mnist-z32` at quality 30) decoded in the page;
- docs: `/docs` until Swagger UI lists the operations.

The budget (issue 13): at most 6 MB on a first visit to the explorer, about 0 on a repeat visit.
Writes bench/results/first_visit.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MNIST = REPO.parent / "shared" / "data" / "mnist" / "mnist9k-images-idx3-ubyte.gz"
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from chromium import CHROMIUM, CHROMIUM_ARGS, NetworkMeter  # noqa: E402  (tests/chromium.py)
from local_server import free_port, running  # noqa: E402  (bench/local_server.py)

FIRST_VISIT_BUDGET = 6_000_000
"""Bytes (decimal MB, as the issue counts them) a first visit to the explorer may transfer."""
REPEAT_VISIT_BUDGET = 20_000
"""'About 0': revalidating the page, its scripts and the model list costs a few 304s."""
READY_TIMEOUT_MS = 120_000


def digit_file(folder: Path) -> Path:
    """A held-out MNIST digit (or a drawn stroke without the data set) as a mnist-z32 .latentz file."""
    from latentz import runtime

    if MNIST.is_file():
        from latentz.data import load_dataset

        image = load_dataset(f"idx:{MNIST}", split="val", limit=1).images[0]
    else:
        image = np.zeros((28, 28, 1), dtype=np.uint8)
        image[5:23, 12:16] = 255
    model = runtime.load("mnist-z32")
    path = folder / "digit.latentz"
    path.write_bytes(model.compress(model.prepare(image).image, quality=30))
    return path


def visit(context: Any, url: str, page_name: str, digit: Path) -> dict[str, Any]:
    page = context.new_page()
    meter = NetworkMeter(page)
    page.goto(url)
    if page_name == "explorer":
        page.wait_for_selector("body[data-ready=true]", timeout=READY_TIMEOUT_MS)
    elif page_name == "receiver":
        page.wait_for_selector("#file", state="attached")
        page.set_input_files("#file", str(digit))
        page.wait_for_selector("body[data-state=done]", timeout=READY_TIMEOUT_MS)
    else:
        page.wait_for_selector(".opblock", timeout=READY_TIMEOUT_MS)
    page.wait_for_load_state("networkidle")
    rows = sorted(meter.rows(), key=lambda row: -row["bytes"])
    page.close()
    base = url.split("/", 3)[:3]
    origin = "/".join(base)
    return {
        "bytes": sum(row["bytes"] for row in rows),
        "requests": len(rows),
        "from_cache": sum(row["from_cache"] for row in rows),
        "files": [
            {
                "url": row["url"].removeprefix(origin),
                "status": row["status"],
                "bytes": row["bytes"],
                "encoding": row.get("encoding", ""),
                "from_cache": row["from_cache"],
            }
            for row in rows
        ],
    }


def measure(base_url: str, digit: Path) -> tuple[dict[str, Any], str]:
    from playwright.sync_api import sync_playwright

    pages = {"explorer": "/explorer", "receiver": "/receiver", "docs": "/docs"}
    results: dict[str, Any] = {}
    with sync_playwright() as playwright:
        for name, path in pages.items():
            with tempfile.TemporaryDirectory(prefix="latentz-profile-") as profile:
                context = playwright.chromium.launch_persistent_context(
                    profile,
                    executable_path=str(CHROMIUM),
                    args=CHROMIUM_ARGS,
                    viewport={"width": 1100, "height": 900},
                )
                version = context.browser.version if context.browser else ""
                results[name] = {
                    "first_visit": visit(context, base_url + path, name, digit),
                    "repeat_visit": visit(context, base_url + path, name, digit),
                }
                context.close()
    return results, version


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for first_visit.json")
    args = parser.parse_args()
    import latentz

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "latentz", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with (
        tempfile.TemporaryDirectory() as folder,
        running(command, f"{url}/api/health", name="latentz serve", start_timeout_s=120),
    ):
        digit = digit_file(Path(folder))
        pages, chromium = measure(url, digit)
        digit_bytes = digit.stat().st_size
    explorer = pages["explorer"]
    budget = {
        "first_visit_budget_bytes": FIRST_VISIT_BUDGET,
        "repeat_visit_budget_bytes": REPEAT_VISIT_BUDGET,
        "explorer_first_visit_bytes": explorer["first_visit"]["bytes"],
        "explorer_repeat_visit_bytes": explorer["repeat_visit"]["bytes"],
        "met": explorer["first_visit"]["bytes"] <= FIRST_VISIT_BUDGET
        and explorer["repeat_visit"]["bytes"] <= REPEAT_VISIT_BUDGET,
    }
    report = {
        "what": "bytes transferred (DevTools encodedDataLength: headers + body on the wire, 0 from cache)",
        "latentz": latentz.__version__,
        "chromium": chromium,
        "python": platform.python_version(),
        "receiver_file_bytes": digit_bytes,
        "budget": budget,
        "pages": pages,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / "first_visit.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, result in pages.items():
        first, repeat = result["first_visit"], result["repeat_visit"]
        print(
            f"{name:9} first visit {first['bytes'] / 1e6:6.2f} MB in {first['requests']} requests; "
            f"repeat visit {repeat['bytes']:,} B "
            f"({repeat['from_cache']} of {repeat['requests']} requests from the cache)"
        )
    print(f"budget {'met' if budget['met'] else 'NOT met'}; wrote {out}")
    if not budget["met"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
