"""Debian's Chromium as tests/test_browser.py and bench/bench_web.py launch it: one home for its flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # runs as root in CI containers
    "--disable-gpu",
    "--disable-background-networking",  # no phoning home: the machines have no internet
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def launch(playwright: Any) -> Any:
    """A headless Chromium browser (Playwright's ``Browser``) from the Debian package."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


class NetworkMeter:
    """What one page downloads, request by request, from the DevTools protocol's Network events.

    ``bytes`` is ``encodedDataLength``: headers and body as they came over the wire (compressed
    bodies count compressed), 0 for an answer from the browser's cache. Start it before the page
    navigates; the counts are complete once the page is idle (``page.wait_for_load_state("networkidle")``).
    """

    def __init__(self, page: Any) -> None:
        self.requests: dict[str, dict[str, Any]] = {}
        self.session = page.context.new_cdp_session(page)
        self.session.on("Network.requestWillBeSent", self._sent)
        self.session.on("Network.requestServedFromCache", self._from_cache)
        self.session.on("Network.responseReceived", self._received)
        self.session.on("Network.loadingFinished", self._finished)
        self.session.on("Network.loadingFailed", self._failed)
        self.session.send("Network.enable")

    def _entry(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.requests.setdefault(
            event["requestId"], {"url": "", "status": None, "bytes": 0, "from_cache": False, "done": False}
        )

    def _sent(self, event: dict[str, Any]) -> None:
        self._entry(event)["url"] = event["request"]["url"]

    def _from_cache(self, event: dict[str, Any]) -> None:
        self._entry(event)["from_cache"] = True

    def _received(self, event: dict[str, Any]) -> None:
        entry, response = self._entry(event), event["response"]
        entry["status"] = response["status"]
        entry["from_cache"] |= bool(response.get("fromDiskCache") or response.get("fromPrefetchCache"))
        headers = {name.lower(): value for name, value in response.get("headers", {}).items()}
        entry["encoding"] = headers.get("content-encoding", "")

    def _finished(self, event: dict[str, Any]) -> None:
        entry = self._entry(event)
        entry["bytes"] = int(event.get("encodedDataLength", 0))
        entry["done"] = True

    def _failed(self, event: dict[str, Any]) -> None:
        entry = self._entry(event)
        entry["done"] = True
        entry["failed"] = event.get("errorText", "failed")

    def rows(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self.requests.values() if entry["url"].startswith("http")]

    def total(self) -> int:
        return sum(row["bytes"] for row in self.rows())
