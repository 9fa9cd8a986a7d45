"""End to end in headless Chromium: a person's path through each tab, heard at the speakers.

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
import json
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

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="browser tests need Chromium: run scripts/setup.sh (or: apt-get install chromium)",
)


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
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={out / 'cam.y4m'}"])
        context.add_init_script(PROBE)
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


def start_microphone(page) -> None:
    """Press Record until the microphone streams.

    gradio's recorder loads after the page: a Record pressed before that shows Stop but
    records nothing, so it is stopped and pressed again.
    """
    from playwright.sync_api import TimeoutError

    for _ in range(4):
        try:
            with page.expect_request(lambda r: "/gradio_api/stream/" in r.url, timeout=15000):
                page.locator("#live-mic .record-button").click()
            return
        except TimeoutError:
            if page.locator("#live-mic .stop-button").count():
                page.locator("#live-mic .stop-button").click()
    pytest.fail("the microphone never started streaming")


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
    assert "start delay" in line and ("no gap" in line or "gap" in line), line
    return start, done


def shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_voice_chat_speaks_through_web_audio_and_barge_in_silences_it(page, live_app, questions):
    start_microphone(page)
    said = say(page, questions["hello"])
    start, _ = check_reply_heard(page, "voice", said["start"])
    status = page.locator("#voice-status").inner_text()
    assert "waited" in status and "first audio" in status
    latency = (start["at"] - said["speechEnd"]) / 1000
    print(f"\nvoice chat: end of speech to first sound: {latency:.2f} s")
    SHOTS.parent.mkdir(parents=True, exist_ok=True)
    (SHOTS.parent / "latency.json").write_text(json.dumps({"speech_end_to_sound_s": latency}))
    assert 0 < latency < 120
    shoot(page, "voice-chat")

    # Barge-in: speak again while the next reply sounds; it goes silent within 100 ms.
    say(page, questions["more"])
    wait_for_event(page, "voice", "start", 2)
    say(page, questions["wait"])
    page.wait_for_function("() => OmniSpeech.players.get('voice').stoppedAt", timeout=WAIT_MS)
    stopped_at = player(page, "voice", "stoppedAt")
    changes = sound(page)
    was_loud = [c for c in changes if c["at"] <= stopped_at]
    if was_loud and was_loud[-1]["loud"]:
        silent = [c for c in changes if c["at"] > stopped_at and not c["loud"]][0]
        print(f"barge-in: silent {silent['at'] - stopped_at:.0f} ms after the signal reached the page")
        assert silent["at"] - stopped_at <= 100
    assert not any(c["loud"] for c in changes if stopped_at + 100 < c["at"] < stopped_at + 1000)
    assert len(live_app.turn_end_times()) >= 2
    # One streaming microphone on the page: gradio's recorder starts (a second one would fail).
    assert not [e for e in page.errors if "encoder" in e]

    # The session's last turn, inside the model: every picture is drawn.
    page.locator("#live-mic .stop-button").click()
    page.get_by_role("tab", name="Inside the model").click()
    page.locator("#inside-last").click()
    page.get_by_text("This turn:").first.wait_for(timeout=WAIT_MS)
    for key in ("tokens", "rope", "audio", "dit", "timeline"):
        picture = page.locator(f"#inside-{key} img")
        picture.wait_for(timeout=60000)
        picture.scroll_into_view_if_needed()
        picture.screenshot(path=str(SHOTS / f"inside-{key}.png"))
    shoot(page, "inside-the-model")


def test_video_call_starts_and_ends_with_one_action(page, questions):
    page.get_by_role("tab", name="Video chat").click()
    with page.expect_request(lambda r: "/gradio_api/stream/" in r.url, timeout=60000):
        page.locator("#video-start-call").click()
    page.locator("#live-mic .stop-button").wait_for(timeout=30000)  # the microphone records
    page.wait_for_selector("#video-preview img", timeout=60000)  # the camera streams
    said = say(page, questions["hello"])
    check_reply_heard(page, "video", said["start"])
    assert "frames" in page.locator("#video-chat .user").first.inner_text()
    shoot(page, "video-chat")
    page.locator("#video-end-call").click()
    page.locator("#live-mic .record-button").wait_for(timeout=30000)
    assert page.locator('#video-camera [title="start recording"]').count() == 1


def test_image_question_typed(page):
    page.get_by_role("tab", name="Image Q&A").click()
    page.locator("#image-input input[type=file]").set_input_files(str(ROOT / "assets" / "street.jpg"))
    page.locator("#image-question textarea").fill("What is in this picture?")
    asked = page.evaluate("Date.now()")
    page.locator("#image-ask").click()
    check_reply_heard(page, "image", asked)
    assert page.locator("#image-chat .bot").first.inner_text().strip()
    assert "tokens" in page.locator("#image-status").inner_text()
    assert "after your turn ended" in page.locator("#image-speech").inner_text()
    shoot(page, "image-qa")


def test_missing_image_shows_a_message(page):
    page.get_by_role("tab", name="Image Q&A").click()
    page.locator("#image-question textarea").fill("What is this?")
    page.locator("#image-ask").click()
    page.get_by_text("Add an image first").first.wait_for(timeout=20000)


def test_voice_cloning_speaks_downloads_and_stops_at_once(page, tmp_path):
    reference = tmp_path / "reference.wav"
    _run("espeak-ng", "-s", "140", "-w", str(reference),
         "This is my reference voice. It was recorded for a few seconds, enough to render a voice.")
    page.get_by_role("tab", name="Voice cloning TTS").click()
    page.locator("#tts-reference input[type=file]").set_input_files(str(reference))
    page.locator("#tts-name textarea, #tts-name input").first.fill("Browser voice")
    page.locator("#tts-create").click()
    page.get_by_text("Voice Browser voice is ready").first.wait_for(timeout=60000)
    page.locator("#tts-text textarea").fill("Good morning. These are exactly the words I typed.")
    asked = page.evaluate("Date.now()")
    page.locator("#tts-speak").click()
    check_reply_heard(page, "tts", asked)
    link = page.locator("#tts-download a").first
    link.wait_for(timeout=30000)
    assert np.array_equal(wav_samples(link.get_attribute("href")), received(page, "tts"))
    shoot(page, "voice-cloning")

    # Stop while it speaks: silent within 100 ms of the click.
    page.evaluate("""() => document.querySelector('#tts-stop').addEventListener('click',
        () => { window.__stopClicked = Date.now(); }, { capture: true })""")
    page.locator("#tts-speak").click()
    starts = wait_for_event(page, "tts", "start", 2)
    page.wait_for_function("(t) => __probe.sound.some((s) => s.loud && s.at >= t)", arg=starts[-1]["at"] - 5,
                           timeout=WAIT_MS)
    page.locator("#tts-stop").click()
    stopped = wait_for_event(page, "tts", "stopped")[-1]
    clicked = page.evaluate("window.__stopClicked")
    changes = [c for c in sound(page) if c["at"] > clicked]
    print(f"\nStop: silent {changes[0]['at'] - clicked:.0f} ms after the click")
    assert not changes[0]["loud"] and changes[0]["at"] - clicked <= 100
    assert stopped["played"] < len(received(page, "tts")) / 24000  # cut short
    assert "stopped" in page.locator("#tts-speech").inner_text()


def test_no_streamed_audio_element_is_left(browser):
    """Every spoken reply above played through the Web Audio player: no HLS playlist was fetched."""
    assert browser.requests and not [u for u in browser.requests if ".m3u8" in u or "/playlist" in u]
