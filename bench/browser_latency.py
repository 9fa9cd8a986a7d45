"""End of the user's speech to the first sound the page plays, in headless Chromium.

    python bench/browser_latency.py                      # this checkout, 5 spoken turns
    python bench/browser_latency.py --app-dir OTHER_DIR  # another checkout of the app (e.g. the old one)

Starts the app (tiny model, 24 tokens, 2 s of speech) and a headless Chromium whose
microphone the benchmark speaks into (espeak-ng questions; tests/js/page_probe.js), so the
end of each question is known to the millisecond. A tap in front of the page's speakers
(an AudioWorklet before the AudioContext's destination; <audio> elements are routed
through one) reports when sound really starts and stops. For each turn in the voice chat
tab it measures:
  speech end -> first sound   what the user waits for,
  gap                         seconds of silence inside the reply after it started,
and splits the wait into the turn reaching the server (speech end -> the app's "turn
received" log line; the page detects the turn, with the end-of-turn pause in it), the
server (-> "first audio chunk sent") and the browser (-> first sound; for the Web Audio
player also the start delay it chose to keep the reply gap-free). It
prints each turn, the median and worst, and a last line
`speech_end_to_sound_s=... gap_s=...` (medians). Numbers from a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "js" / "page_probe.js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
QUESTIONS = [
    "Hello, what can you see right now?",
    "Please tell me a little more about it.",
    "What is the weather like today?",
    "Can you say that again?",
    "Thank you, that is all for now.",
]
#: Headless Chromium with sound allowed and a fake microphone (the probe replaces it).
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream"]
#: Silence shorter than this inside a reply is part of the speech, not a gap.
MIN_GAP_S = 0.02


def start_app(app_dir: Path, workdir: Path, args) -> tuple[subprocess.Popen, str, Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = workdir / "app.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False",
               OMNI_APP_CACHE=str(workdir / "cache"))
    process = subprocess.Popen(
        [sys.executable, "app.py", "--model", "tiny", "--port", str(port), "--max-new-tokens", str(args.max_new_tokens),
         "--max-speech-seconds", str(args.max_speech_seconds)],
        cwd=app_dir, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited early:\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url, log
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the app did not start within 5 minutes")


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def log_times(log: Path, what: str) -> list[float]:
    return [float(t) for t in re.findall(rf"{what} at ([0-9.]+)", log.read_text())]


#: The app's log line when a spoken turn reaches the server ("turn ended" in older apps,
#: whose server detected the turn itself).
TURN = "turn (?:received|ended)"


def sound_spans(changes: list[dict], start: float, end: float) -> list[tuple[float, float]]:
    """Stretches of sound (epoch s) from the tap's changes, clipped to [start, end]."""
    spans, since = [], None
    for change in changes:
        at = change["at"] / 1000
        if change["loud"] and since is None:
            since = at
        elif not change["loud"] and since is not None:
            spans.append((since, at))
            since = None
    if since is not None:
        spans.append((since, end))
    return [(max(a, start), min(b, end)) for a, b in spans if b > start and a < end]


def start_microphone(page, tries: int = 8) -> None:
    """Start listening: the page's own listener (Start listening), or, in an older app whose
    microphone streams to the server, press Record until it streams."""
    from playwright.sync_api import TimeoutError

    if page.locator("#listen-toggle").count():
        page.locator("#listen-toggle").click()
        page.wait_for_function("() => OmniListen.listening()", timeout=60000)
        return
    mic = page.locator("#live-mic, #voice-mic").first
    for _ in range(tries):
        try:
            with page.expect_request(lambda r: "/gradio_api/stream/" in r.url, timeout=15000):
                mic.locator(".record-button").click()
            return
        except TimeoutError:
            try:  # a recorder that started without streaming: stop it and try again
                mic.locator(".stop-button").click(timeout=5000)
            except TimeoutError:
                pass
    raise SystemExit("the microphone did not start streaming")


def run_turns(url: str, log: Path, workdir: Path, turns: int, timeout_s: float) -> list[dict]:
    from playwright.sync_api import sync_playwright

    said_wavs = []
    for k in range(turns):
        wav = workdir / f"q{k}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), QUESTIONS[k % len(QUESTIONS)]], check=True)
        said_wavs.append(base64.b64encode(wav.read_bytes()).decode())
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        context = browser.new_context()
        context.add_init_script(PROBE.read_text())
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#voice-chat", timeout=120000)
        start_microphone(page)
        time.sleep(1.0)
        for k, wav in enumerate(said_wavs):
            decided = len(log_times(log, TURN))
            said = page.evaluate("(b) => window.__probe.say(b)", wav)
            deadline = time.time() + timeout_s
            while len(log_times(log, TURN)) <= decided and time.time() < deadline:
                time.sleep(0.2)
            # The reply is over when the page has been silent for 3 s after some sound (and an
            # <audio> element that played has ended: gradio's player may stall longer).
            heard_end = None
            while time.time() < deadline:
                changes = page.evaluate("window.__probe.sound")
                media = [m["type"] for m in page.evaluate("window.__probe.media") if m["at"] > said["speechEnd"]]
                after = [c for c in changes if c["at"] > said["speechEnd"]]
                ended = "playing" not in media or media[::-1].index("ended") < media[::-1].index("playing") \
                    if "ended" in media else "playing" not in media
                if after and not after[-1]["loud"] and time.time() * 1000 - after[-1]["at"] > 3000 and ended:
                    heard_end = after[-1]["at"] / 1000
                    break
                time.sleep(0.5)
            if heard_end is None:
                print(f"turn {k + 1}: no reply heard within {timeout_s:.0f} s", file=sys.stderr)
                continue
            changes = page.evaluate("window.__probe.sound")
            spans = sound_spans(changes, said["speechEnd"] / 1000, heard_end)
            decision = [t for t in log_times(log, TURN)][decided]
            sent = [t for t in log_times(log, "first audio chunk sent") if t > decision]
            first_sound = spans[0][0]
            gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False) if b[0] - a[1] >= MIN_GAP_S]
            # The Web Audio player says how long it chose to wait for the speech to build up.
            start = page.evaluate("""() => { const p = window.OmniSpeech && OmniSpeech.players.get('voice');
                const s = p ? p.events.filter((e) => e.type === 'start') : []; return s[s.length - 1] || null; }""")
            delay = start["delay"] if start else 0.0
            # When the page sent the turn (an app whose page detects turns notes it).
            page_sent = page.evaluate("""(after) => { const l = window.OmniListen ? OmniListen.state.log : [];
                const t = l.filter((e) => e.type === 'turn' && e.at > after); return t.length ? t[0].at : null; }""",
                                      said["speechEnd"])
            page_sent = page_sent / 1000 if page_sent else float("nan")
            rows.append({"wait": first_sound - said["speechEnd"] / 1000, "gap": sum(gaps), "gaps": len(gaps),
                         "delay": delay, "rate": start["rate"] if start else float("nan"),
                         "vad": decision - said["speechEnd"] / 1000,
                         "page": page_sent - said["speechEnd"] / 1000, "transit": decision - page_sent,
                         "server": (sent[0] - decision) if sent else float("nan"),
                         "browser": (first_sound - sent[0]) if sent else float("nan"),
                         "heard": sum(b - a for a, b in spans)})
            row = rows[-1]
            chosen = f", of which start delay {delay:.2f} at {row['rate']:.2f}x real time" if start else ""
            print(f"turn {k + 1}: speech end -> first sound {row['wait']:.2f} s (turn to server {row['vad']:.2f} "
                  f"[page sent it after {row['page']:.2f}, on the way {row['transit']:.2f}] + "
                  f"server {row['server']:.2f} + browser {row['browser']:.2f}{chosen}); {row['heard']:.2f} s heard, "
                  f"gap {row['gap']:.2f} s in {row['gaps']} stretch(es)", flush=True)
            time.sleep(1.0)
        browser.close()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-dir", type=Path, default=ROOT, help="checkout of the app to measure (default: this one)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-speech-seconds", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for one reply")
    args = parser.parse_args(argv)
    if CHROMIUM is None:
        raise SystemExit("needs chromium (scripts/setup.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="omni-bench-") as folder:
        workdir = Path(folder)
        process, url, log = start_app(args.app_dir.resolve(), workdir, args)
        try:
            rows = run_turns(url, log, workdir, args.turns, args.timeout)
        finally:
            stop_app(process)
    if not rows:
        print("no turn was answered", file=sys.stderr)
        return 1

    def stat(key: str) -> str:
        values = [r[key] for r in rows]
        return f"median {statistics.median(values):.2f} s, worst {max(values):.2f} s"

    print(f"\n{args.app_dir.resolve().name}: {len(rows)} turns")
    print(f"  speech end -> first sound  {stat('wait')}")
    print(f"    turn to the server       {stat('vad')} (the end-of-turn pause is in it)")
    if not any(math.isnan(r["page"]) for r in rows):
        print(f"      the page sent it after {stat('page')}")
        print(f"      on the way to the app  {stat('transit')}")
    print(f"    server, to first audio   {stat('server')}")
    print(f"    browser, to first sound  {stat('browser')}")
    print(f"      of it, start delay     {stat('delay')} (chosen by the player from the production rate)")
    print(f"  gap after playback started {stat('gap')}")
    waits, gaps = [r["wait"] for r in rows], [r["gap"] for r in rows]
    print(f"speech_end_to_sound_s={statistics.median(waits):.2f} gap_s={statistics.median(gaps):.2f} "
          f"worst_speech_end_to_sound_s={max(waits):.2f} worst_gap_s={max(gaps):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
