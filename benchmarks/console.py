"""The web console's weight and first paint on loopback, and the README's screenshot.

Starts `tessera serve` on the bundled models and demo collections (what `make serve` builds), loads
/ui in Debian's headless Chromium (Playwright) `--loads` times with a cold cache, and reads the
browser's own timings: first contentful paint, DOMContentLoaded and load, and the bytes of the page
and its assets. Then searches the Cranfield demo with reranking and saves the screenshot the README
shows. Writes benchmarks/results/console.{json,md} and docs/console-search.png.

Run (after `make serve` has built the demo once): .venv/bin/python benchmarks/console.py [--loads 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "console.json"
REPORT = ROOT / "benchmarks" / "results" / "console.md"
SCREENSHOT = ROOT / "docs" / "console-search.png"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TIMINGS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const paint = performance.getEntriesByName('first-contentful-paint')[0];
  const assets = performance.getEntriesByType('resource').filter(r => r.name.includes('/ui/'));
  return {fcp: paint ? paint.startTime : null, dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
          bytes: nav.encodedBodySize + assets.reduce((s, r) => s + r.encodedBodySize, 0)};
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(port: int) -> subprocess.Popen:
    env = dict(os.environ, TESSERA_PORT=str(port), TESSERA_HOST="127.0.0.1", TESSERA_ACCESS_LOG="false")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tessera"), "serve"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("tessera serve did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args()
    port = _free_port()
    server = _serve(port)
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            loads = []
            for _ in range(args.loads):
                context = browser.new_context()  # a cold cache each time
                page = context.new_page()
                page.goto(f"{base}/ui/", wait_until="load")
                loads.append(page.evaluate(TIMINGS))
                context.close()
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{base}/ui/")
            page.select_option("#search-collection", "cranfield")
            page.fill("#search-query", "boundary layer transition on a flat plate")
            if not page.is_disabled("#search-rerank"):
                page.check("#search-rerank")
            page.click("#search-form button[type=submit]")
            expect(page.locator("#search-status")).to_contain_text("hits", timeout=60_000)
            page.screenshot(path=str(SCREENSHOT))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    results = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "loads": loads,
        "static_bytes": sum(p.stat().st_size for p in (ROOT / "app" / "console" / "static").iterdir()),
    }
    RESULTS.write_text(json.dumps(results, indent=2))
    REPORT.write_text(_markdown(results))
    print(REPORT.read_text())


def _markdown(results: dict) -> str:
    def stat(key: str) -> str:
        values = [load[key] for load in results["loads"] if load[key] is not None]
        return f"{statistics.median(values):.0f} ms (max {max(values):.0f})"

    return "\n".join(
        [
            "# The web console: weight and first paint",
            "",
            f"{results['machine']}; {results['date']}. Command: `.venv/bin/python benchmarks/console.py`: "
            f"/ui loaded {len(results['loads'])} times in headless Chromium on loopback, a cold cache each time, "
            "the server being `tessera serve` on the bundled models.",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| first contentful paint, median | {stat('fcp')} | < 200 ms |",
            f"| DOMContentLoaded, median | {stat('dcl')} | |",
            f"| load, median | {stat('load')} | |",
            f"| bytes over the wire (page + assets) | {results['loads'][0]['bytes']:,} | |",
            f"| static files on disk | {results['static_bytes']:,} | < 300 KB |",
            "",
            "No CDN, no framework, no build step: three files in `app/console/static/`.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
