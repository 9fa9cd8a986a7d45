"""End to end in headless Chromium: a person's path through each tab, heard at the speakers.

The page is instrumented by tests/js/page_probe.js (see tests/browser_kit.py): a tap in
front of the speakers, and a microphone the tests speak into (espeak-ng questions), so
each turn's end is known to the millisecond. Screenshots of each tab go to
test-output/screenshots/.
"""

from __future__ import annotations

import json
import time

import numpy as np
from browser_kit import (
    NEEDS_CHROMIUM,
    ROOT,
    SHOTS,
    WAIT_MS,
    _run,
    check_reply_heard,
    listener_log,
    player,
    received,
    say,
    shoot,
    sound,
    start_listening,
    wait_for_event,
    wav_samples,
)

pytestmark = NEEDS_CHROMIUM


def test_voice_chat_speaks_through_web_audio_and_barge_in_silences_it(page, live_app, questions):
    start_listening(page)
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

    # Barge-in: speak again while the next reply sounds; the page silences it within 100 ms
    # of deciding, and the server is told to stop making it.
    say(page, questions["more"])
    wait_for_event(page, "voice", "start", 2)
    page.wait_for_function("(t) => __probe.sound.some((s) => s.loud && s.at >= t)",
                           arg=wait_for_event(page, "voice", "start", 2)[-1]["at"] - 5, timeout=WAIT_MS)
    said = say(page, questions["wait"])
    page.wait_for_function("() => OmniSpeech.players.get('voice').stoppedAt", timeout=WAIT_MS)
    stopped_at = player(page, "voice", "stoppedAt")
    changes = sound(page)
    before = [c for c in changes if c["at"] <= stopped_at]
    assert before and before[-1]["loud"], "the reply was not sounding when the person spoke over it"
    silent = [c for c in changes if c["at"] > stopped_at and not c["loud"]][0]
    print(f"barge-in: decided {stopped_at - said['speechStart']:.0f} ms after the speech began, "
          f"silent {silent['at'] - stopped_at:.0f} ms later")
    assert silent["at"] - stopped_at <= 100
    assert not any(c["loud"] for c in changes if stopped_at + 100 < c["at"] < stopped_at + 1000)
    assert [e["tab"] for e in listener_log(page, "barge")] == ["voice"]
    page.wait_for_function("() => OmniSpeech.players.get('voice').events.some((e) => e.type === 'stopped')",
                           timeout=WAIT_MS)
    # "Wait, stop talking please" is the third turn; the server heard three.
    page.wait_for_function("() => OmniListen.state.log.filter((e) => e.type === 'turn').length >= 3",
                           timeout=WAIT_MS)
    deadline = time.time() + 30
    while len(live_app.turn_end_times()) < 3 and time.time() < deadline:  # the log line follows the request
        time.sleep(0.2)
    assert len(live_app.turn_end_times()) >= 3

    # The session's last turn, inside the model: every picture is drawn.
    page.locator("#listen-toggle").click()  # stop listening
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
    page.locator("#video-start-call").click()
    page.wait_for_function("() => OmniListen.listening()", timeout=60000)  # the page listens
    page.wait_for_selector("#video-preview img", timeout=60000)  # the camera streams
    said = say(page, questions["hello"])
    check_reply_heard(page, "video", said["start"])
    turn = listener_log(page, "turn")[-1]
    assert turn["tab"] == "video"
    assert "frames" in page.locator("#video-chat .user").first.inner_text()
    shoot(page, "video-chat")
    page.locator("#video-end-call").click()
    page.wait_for_function("() => !OmniListen.listening()", timeout=30000)
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
