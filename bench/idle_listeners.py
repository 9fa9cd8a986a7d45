"""What listening pages cost the server while nobody speaks, and what closing them logs.

    python bench/idle_listeners.py                      # this checkout, 10 listening pages
    python bench/idle_listeners.py --app-dir OTHER_DIR  # another checkout (e.g. the old one)

Starts the app (tiny model) and a headless Chromium with N pages (a browser session
each) that all start listening, with a silent microphone. Over a quiet window it measures
the app process's CPU time (in cores); over a second one it counts the HTTP requests the
app reads (with strace, on the server's side: the browser's DevTools do not see the
uploads of gradio's streaming microphone); then it closes every page and counts the
tracebacks the app logs afterwards. Last line:
`listeners=N server_cpu_cores=... requests_per_s=... tracebacks_on_close=...`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
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


#: A read(2)/recvfrom(2) of the app that begins with an HTTP request line, as strace prints it.
REQUEST_LINE = re.compile(r'^(?:\[pid\s+\d+\] )?(?:read|recvfrom|recvmsg)\(\d+, '
                          r'"(?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) /')


def count_requests(pid: int, seconds: float) -> int | None:
    """HTTP requests the process (all its threads) reads in the next ``seconds``; None
    without strace. Counted apart from the CPU window: tracing slows the process."""
    if shutil.which("strace") is None:
        return None
    traced = subprocess.run(["timeout", "--signal=INT", str(seconds), "strace", "-f", "-qq", "-s", "16",
                             "-e", "trace=read,recvfrom,recvmsg", "-p", str(pid)],
                            capture_output=True, text=True, errors="replace")
    return sum(bool(REQUEST_LINE.match(line)) for line in traced.stderr.splitlines())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-dir", type=Path, default=ROOT, help="checkout of the app to measure (default: this one)")
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the quiet window")
    parser.add_argument("--request-seconds", type=float, default=10.0, help="length of the window counting requests")
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
                pages = []
                for _ in range(args.pages):
                    context = browser.new_context()  # a browser session each
                    context.add_init_script(PROBE.read_text())
                    page = context.new_page()
                    page.goto(url)
                    page.wait_for_selector("#voice-chat", timeout=120000)
                    start_microphone(page)
                    pages.append((context, page))
                    print(f"page {len(pages)} of {args.pages} listening", file=sys.stderr, flush=True)
                time.sleep(5.0)  # everything started has settled
                before, since = cpu_seconds(process.pid), time.time()
                time.sleep(args.seconds)
                used = cpu_seconds(process.pid) - before
                elapsed = time.time() - since
                sent = count_requests(process.pid, args.request_seconds)
                lines_before = len(log.read_text().splitlines())
                for context, _ in pages:
                    context.close()
                time.sleep(5.0)
                browser.close()
            after = log.read_text().splitlines()[lines_before:]
        finally:
            stop_app(process)
    tracebacks = sum(line.startswith("Traceback") for line in after)
    rate = "n/a (needs strace)" if sent is None else f"{sent / args.request_seconds:.1f}"
    print(f"{args.app_dir.resolve().name}: {args.pages} listening pages without speech: server CPU "
          f"{used / elapsed:.3f} cores (over {elapsed:.0f} s), {rate} requests/s (over {args.request_seconds:.0f} s); "
          f"closing them logged {tracebacks} traceback(s)")
    print(f"listeners={args.pages} server_cpu_cores={used / elapsed:.3f} requests_per_s={rate.split()[0]} "
          f"tracebacks_on_close={tracebacks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
