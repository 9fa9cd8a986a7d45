"""What listening pages cost the server while nobody speaks, and what closing them logs.

    python bench/idle_listeners.py                      # this checkout, 10 listening pages
    python bench/idle_listeners.py --app-dir OTHER_DIR  # another checkout (e.g. the old one)

Starts the app (tiny model) and a headless Chromium with N pages (a browser session
each) that all start listening, with a silent microphone. Over a quiet window it measures
the app process's CPU time (in cores) and counts the requests the pages send to it; then
it closes every page and counts the tracebacks the app logs afterwards. Last line:
`listeners=N server_cpu_cores=... requests_per_s=... tracebacks_on_close=...`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from browser_latency import BROWSER_ARGS, CHROMIUM, PROBE, ROOT, start_app, start_microphone, stop_app


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-dir", type=Path, default=ROOT, help="checkout of the app to measure (default: this one)")
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the quiet window")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-speech-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    if CHROMIUM is None:
        raise SystemExit("needs chromium (scripts/setup.sh installs it)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="omni-bench-") as folder:
        process, url, log = start_app(args.app_dir.resolve(), Path(folder), args)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
                requests: list[str] = []
                pages = []
                for _ in range(args.pages):
                    context = browser.new_context()  # a browser session each
                    context.add_init_script(PROBE.read_text())
                    page = context.new_page()
                    # The DevTools protocol sees every request the page makes (uploads included).
                    network = context.new_cdp_session(page)
                    network.send("Network.enable")
                    network.on("Network.requestWillBeSent",
                               lambda e: requests.append(e["request"]["url"]) if e["request"]["url"].startswith(url)
                               else None)
                    page.goto(url)
                    page.wait_for_selector("#voice-chat", timeout=120000)
                    start_microphone(page)
                    pages.append((context, page))
                time.sleep(5.0)  # everything started has settled
                before, since, counted = cpu_seconds(process.pid), time.time(), len(requests)
                time.sleep(args.seconds)
                used = cpu_seconds(process.pid) - before
                elapsed = time.time() - since
                sent = len(requests) - counted
                lines_before = len(log.read_text().splitlines())
                for context, _ in pages:
                    context.close()
                time.sleep(5.0)
                browser.close()
            after = log.read_text().splitlines()[lines_before:]
        finally:
            stop_app(process)
    tracebacks = sum(line.startswith("Traceback") for line in after)
    print(f"{args.app_dir.resolve().name}: {args.pages} listening pages, {elapsed:.0f} s without speech: "
          f"server CPU {used / elapsed:.3f} cores, {sent} requests ({sent / elapsed:.1f}/s); "
          f"closing them logged {tracebacks} traceback(s)")
    print(f"listeners={args.pages} server_cpu_cores={used / elapsed:.3f} requests_per_s={sent / elapsed:.1f} "
          f"tracebacks_on_close={tracebacks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
