"""Browser test kit: one headless Chromium per test module, instrumented, and helpers.

An init script (tests/js/page_probe.js) taps every AudioContext in front of its speakers,
so the tests see when speech really sounds and when it stops, and gives the page a
microphone the test speaks into (espeak-ng questions), so each turn's end is known to the
millisecond. The webcam is a generated y4m. One browser serves all tests; screenshots of
each tab go to test-output/screenshots/.

Needs Debian's chromium (scripts/setup.sh installs it). Without it these tests are
skipped with instructions.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = (Path(__file__).resolve().parent / "js" / "page_probe.js").read_text()
#: The longest chunk the streaming engine sends for a 2 s reply: "within one chunk".
ONE_CHUNK = 0.76
#: Generous: the model runs on a shared CPU.
WAIT_MS = 180_000

#: Every browser test module sets ``pytestmark = NEEDS_CHROMIUM``.
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None,
    reason="browser tests need Chromium: run scripts/setup.sh (or: apt-get install chromium)",
)
#: Chromium as the probe needs it (add the autoplay flag, fake devices and a viewport as wanted).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> dict[str, str]:
    """Spoken questions (base64 WAV) for the page's microphone."""
    out = tmp_path_factory.mktemp("questions")
    said = {}
    for name, text in (("hello", "Hello, what can you see right now?"), ("more", "Please tell me a little more."),
                       ("wait", "Wait, stop talking please.")):
        _run("espeak-ng", "-w", str(out / f"{name}.wav"), text)
        said[name] = base64.b64encode((out / f"{name}.wav").read_bytes()).decode()
    return said


@pytest.fixture(scope="module")
def browser(live_app, tmp_path_factory):
    """One Chromium for every test, instrumented by the probe; records every request URL."""
    from playwright.sync_api import sync_playwright

    out = tmp_path_factory.mktemp("devices")
    _run("ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-t", "8",
         "-pix_fmt", "yuv420p", str(out / "cam.y4m"))
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(out / "profile"), executable_path=CHROMIUM, headless=True, viewport={"width": 1280, "height": 1000},
            args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={out / 'cam.y4m'}"])
        context.add_init_script(PROBE)
        context.playwright = p  # for a second browser in the same module (one Playwright per thread)
        context.requests = []
        context.on("request", lambda request: context.requests.append(request.url))
        yield context
        context.close()


@pytest.fixture
def page(browser, live_app):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(f"{error} {error.stack}"))
    page.app_log = live_app.log
    page.errors = errors
    page.goto(live_app.url)
    page.wait_for_selector("#voice-chat", timeout=60000)
    yield page
    if errors:
        print("errors in the page:", *errors, sep="\n  ")
    page.close()


def start_listening(page) -> None:
    """Press Start listening; returns once the page listens (microphone open, VAD running)."""
    page.locator("#listen-toggle").click()
    page.wait_for_function("() => OmniListen.listening()", timeout=60000)


def listener_log(page, kind: str | None = None) -> list[dict]:
    """What the page's listener noted ({type, at, ...}), of one type or all."""
    return [e for e in page.evaluate("OmniListen.state.log") if kind is None or e["type"] == kind]


def say(page, wav_b64: str) -> dict:
    """Speak into the page's microphone; returns epoch ms of the start and of the end of the speech."""
    return page.evaluate("(b) => window.__probe.say(b)", wav_b64)


def player(page, name: str, what: str):
    return page.evaluate(f"(n) => {{ const p = OmniSpeech.players.get(n); return p && p.{what}; }}", name)


def wait_for_event(page, name: str, kind: str, count: int = 1) -> list[dict]:
    from playwright.sync_api import TimeoutError

    try:
        page.wait_for_function(
            "([n, kind, count]) => { const p = OmniSpeech.players.get(n);"
            " return p && p.events.filter((e) => e.type === kind).length >= count; }",
            arg=[name, kind, count], timeout=WAIT_MS)
    except TimeoutError:
        pytest.fail(f"no {kind} event #{count} from the {name} player; it says "
                    f"{page.locator(f'#{name}-speech').inner_text()!r}, its events: {player(page, name, 'events')}, "
                    f"status {page.locator(f'#{name}-status').inner_text()!r}; errors in the page: {page.errors}; "
                    f"the app's log ends:\n"
                    + "\n".join(page.app_log.read_text().splitlines()[-15:]))
    return [e for e in player(page, name, "events") if e["type"] == kind]


def sound(page) -> list[dict]:
    """What the tap heard from the players' AudioContext: {loud, at} changes, in order."""
    return page.evaluate("() => { const id = __probe.tapOf(OmniSpeech.context());"
                         " return __probe.sound.filter((s) => s.context === id); }")


def loud_between(changes: list[dict], start: float, end: float) -> float:
    """Seconds of sound between two epoch-ms moments."""
    total, since = 0.0, None
    for change in changes:
        at = min(max(change["at"], start), end)
        if change["loud"] and since is None:
            since = at
        elif not change["loud"] and since is not None:
            total += at - since
            since = None
    if since is not None:
        total += end - since
    return total / 1000


def received(page, name: str) -> np.ndarray:
    """The int16 samples the player received for its current reply."""
    data = page.evaluate("(n) => OmniSpeech.players.get(n).received.flatMap((c) => Array.from(c))", name)
    return np.asarray(data, dtype=np.int16)


def wav_samples(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=10) as response:
        with wave.open(io.BytesIO(response.read())) as wav:
            assert (wav.getframerate(), wav.getnchannels()) == (24000, 1)
            return np.frombuffer(wav.readframes(wav.getnframes()), "<i2")


def replay_samples(page, elem_id: str) -> np.ndarray:
    """The WAV behind the replay player's download button."""
    link = page.locator(f"#{elem_id} a[download]").first
    link.wait_for(state="attached", timeout=60000)
    return wav_samples(link.get_attribute("href"))


def check_reply_heard(page, name: str, started_after: float) -> tuple[dict, dict]:
    """The reply played to its end: as long as its speech (within one chunk), gap-free, and the
    replay WAV holds exactly the streamed samples. Returns its start and done events."""
    done = wait_for_event(page, name, "done")[-1]
    start = [e for e in player(page, name, "events") if e["type"] == "start" and e["reply"] == done["reply"]][-1]
    samples = received(page, name)
    heard = loud_between(sound(page), started_after, done["at"] + 50)
    assert len(samples) and abs(heard - len(samples) / 24000) <= ONE_CHUNK, (heard, len(samples) / 24000)
    assert np.array_equal(replay_samples(page, f"{name}-replay"), samples)
    line = page.locator(f"#{name}-speech").inner_text()
    assert re.search(r"start delay [0-9.]+ s · (no gap|[0-9]+ gaps? \([0-9.]+ s\)) · [0-9.]+ s of speech", line), line
    return start, done


def shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


