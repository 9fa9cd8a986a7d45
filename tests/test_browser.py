"""End to end in headless Chromium: a person's path through each tab.

The browser gets a fake microphone (espeak-ng speech with long pauses; Chromium loops
the file) and a fake webcam (a generated y4m). Every `<audio>` element is hooked so the
tests can see the streamed speech really play to its end. Screenshots of each tab go to
test-output/screenshots/.

Needs Debian's chromium (scripts/setup.sh installs it). Without it these tests are
skipped with instructions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="browser tests need Chromium: run scripts/setup.sh (or: apt-get install chromium)",
)

HOOK_AUDIO = """
window.__audio = [];
const hook = (el) => {
  if (el.__hooked) return;
  el.__hooked = true;
  ['play', 'playing', 'ended', 'pause'].forEach((type) => el.addEventListener(type, () =>
    window.__audio.push({type, at: Date.now(), id: (el.closest('[id]') || {}).id || ''})));
};
new MutationObserver(() => document.querySelectorAll('audio').forEach(hook))
  .observe(document, {subtree: true, childList: true});
"""


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def fake_devices(tmp_path_factory) -> dict[str, Path]:
    """Two questions with long silences after each (the file loops), and a test-pattern webcam."""
    out = tmp_path_factory.mktemp("devices")
    _run("espeak-ng", "-w", str(out / "q1.wav"), "Hello, what can you see right now?")
    _run("espeak-ng", "-w", str(out / "q2.wav"), "Please tell me a little more.")
    _run("sox", str(out / "q1.wav"), "-r", "48000", "-c", "1", "-b", "16", str(out / "a1.wav"), "pad", "1", "10")
    _run("sox", str(out / "q2.wav"), "-r", "48000", "-c", "1", "-b", "16", str(out / "a2.wav"), "pad", "0", "16")
    _run("sox", str(out / "a1.wav"), str(out / "a2.wav"), str(out / "mic.wav"))
    _run("ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-t", "8",
         "-pix_fmt", "yuv420p", str(out / "cam.y4m"))
    return {"mic": out / "mic.wav", "cam": out / "cam.y4m"}


@pytest.fixture
def page(fake_devices, live_app, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            viewport={"width": 1280, "height": 1000},
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={fake_devices['mic']}",
                  f"--use-file-for-fake-video-capture={fake_devices['cam']}"])
        context.add_init_script(HOOK_AUDIO)
        page = context.new_page()
        page.goto(live_app.url)
        page.wait_for_selector("#voice-chat", timeout=30000)
        yield page
        context.close()


def audio_events(page, element_id: str) -> list[dict]:
    return [e for e in page.evaluate("window.__audio") if e["id"] == element_id]


def wait_for_audio(page, element_id: str, kind: str, count: int = 1, timeout_s: float = 60) -> list[dict]:
    page.wait_for_function(
        "([id, kind, n]) => window.__audio.filter((e) => e.id === id && e.type === kind).length >= n",
        arg=[element_id, kind, count], timeout=timeout_s * 1000)
    return [e for e in audio_events(page, element_id) if e["type"] == kind]


def bot_messages(page, chat_id: str) -> list[str]:
    return page.locator(f"#{chat_id} .bot").all_inner_texts()


def shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_voice_chat_two_turns_by_voice_activity(page, live_app):
    already = len(live_app.turn_end_times())
    page.locator("#voice-mic").get_by_role("button", name="Record").click()
    played = wait_for_audio(page, "voice-reply", "playing", 1, timeout_s=90)
    wait_for_audio(page, "voice-reply", "ended", 1, timeout_s=90)
    page.wait_for_function("() => document.querySelectorAll('#voice-chat .bot').length >= 2", timeout=120000)
    wait_for_audio(page, "voice-reply", "ended", 2, timeout_s=90)
    assert all(text.strip() for text in bot_messages(page, "voice-chat"))
    assert "first audio" in page.locator("#voice-status").inner_text()
    shoot(page, "voice-chat")
    ended = live_app.turn_end_times()[already:]
    assert len(ended) >= 2
    # End of speech (the moment voice activity detection ended the turn) -> first sound.
    latency = played[0]["at"] / 1000 - ended[0]
    print(f"\nvoice chat: end of speech to first audible reply chunk: {latency:.2f} s")
    (SHOTS.parent / "latency.json").write_text(json.dumps({"vad_end_to_playing_s": latency}))
    assert 0 < latency < 30
    # The same session's last turn, inside the model: every picture is drawn.
    page.locator("#voice-mic").get_by_role("button", name="Stop").first.click()
    page.get_by_role("tab", name="Inside the model").click()
    page.locator("#inside-last").click()
    page.get_by_text("This turn:").first.wait_for(timeout=60000)
    for key in ("tokens", "rope", "audio", "dit", "timeline"):
        picture = page.locator(f"#inside-{key} img")
        picture.wait_for(timeout=30000)
        picture.scroll_into_view_if_needed()
        picture.screenshot(path=str(SHOTS / f"inside-{key}.png"))
    shoot(page, "inside-the-model")


def test_video_chat_turn_with_webcam(page):
    page.get_by_role("tab", name="Video chat").click()
    camera = page.locator("#video-camera")
    camera.get_by_role("button", name="Click to Access Webcam").click()
    camera.get_by_role("button", name="capture photo").click()
    page.locator("#video-mic").get_by_role("button", name="Record").click()
    page.wait_for_selector("#video-preview img", timeout=30000)
    page.wait_for_function("() => document.querySelectorAll('#video-chat .bot').length >= 1", timeout=90000)
    wait_for_audio(page, "video-reply", "playing", 1, timeout_s=60)
    wait_for_audio(page, "video-reply", "ended", 1, timeout_s=60)
    user_turn = page.locator("#video-chat .user").first.inner_text()
    assert "frames" in user_turn
    shoot(page, "video-chat")


def test_image_question_typed(page):
    page.get_by_role("tab", name="Image Q&A").click()
    page.locator("#image-input input[type=file]").set_input_files(str(ROOT / "assets" / "street.jpg"))
    page.locator("#image-question textarea").fill("What is in this picture?")
    page.locator("#image-ask").click()
    page.wait_for_function("() => document.querySelectorAll('#image-chat .bot').length >= 1", timeout=60000)
    wait_for_audio(page, "image-reply", "playing", 1, timeout_s=60)
    wait_for_audio(page, "image-reply", "ended", 1, timeout_s=60)
    assert bot_messages(page, "image-chat")[0].strip()
    assert "tokens" in page.locator("#image-status").inner_text()
    shoot(page, "image-qa")


def test_missing_image_shows_a_message(page):
    page.get_by_role("tab", name="Image Q&A").click()
    page.locator("#image-question textarea").fill("What is this?")
    page.locator("#image-ask").click()
    page.get_by_text("Add an image first").first.wait_for(timeout=20000)


def test_voice_cloning_speaks_and_downloads(page, tmp_path):
    import urllib.request

    reference = tmp_path / "reference.wav"
    _run("espeak-ng", "-s", "140", "-w", str(reference),
         "This is my reference voice. It was recorded for a few seconds, enough to render a voice.")
    page.get_by_role("tab", name="Voice cloning TTS").click()
    page.locator("#tts-reference input[type=file]").set_input_files(str(reference))
    page.locator("#tts-name textarea, #tts-name input").first.fill("Browser voice")
    page.locator("#tts-create").click()
    page.get_by_text("Voice Browser voice is ready").first.wait_for(timeout=30000)
    page.locator("#tts-text textarea").fill("Good morning. These are exactly the words I typed.")
    page.locator("#tts-speak").click()
    wait_for_audio(page, "tts-audio", "playing", 1, timeout_s=60)
    wait_for_audio(page, "tts-audio", "ended", 1, timeout_s=60)
    link = page.locator("#tts-download a").first
    link.wait_for(timeout=30000)
    data = urllib.request.urlopen(link.get_attribute("href"), timeout=10).read()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 1000
    shoot(page, "voice-cloning")
