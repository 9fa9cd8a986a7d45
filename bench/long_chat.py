"""Long conversations on the tiny model: every turn with and without cache reuse, side by side.

    python bench/long_chat.py                 # a 12-turn video chat and a 20-turn voice chat
    python bench/long_chat.py --video-turns 4 --voice-turns 4    # a quick look

Each turn of a scripted conversation (espeak-ng speech; for the video chat, generated
clips with that speech as their sound) is answered twice, alternating which goes first:
once as a conversation the service keeps a cache for (``Request.session``), once as a
request without one (the whole prompt runs every turn). The conversation goes on with
the reply, so both see the same history. Printed per turn: time to first text and first
audio of each, prompt tokens and how many the cache held, whether both replies were
equal (text tokens and speech codes, same seed), and the process's memory. Then one
summary line per conversation:
  turns=N ttft_last_over_first=R_cached (no cache: R_full) peak_rss_mb=M failures=F
where R is the time to first text of the last turn over the first's.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni_app.api import Request  # noqa: E402
from omni_app.config import GenerationLimits, ServiceConfig  # noqa: E402
from omni_app.conversation import AudioPart, Conversation, VideoPart  # noqa: E402
from omni_app.engine.service import ModelService  # noqa: E402
from omni_app.events import Done, TextDelta  # noqa: E402
from omni_app.media import load_audio, load_video  # noqa: E402

SENTENCES = [
    "Hello, can you hear me?", "What do you see right now?", "Tell me about the colours.",
    "Is anything moving?", "How many shapes are there?", "Describe the left side.",
    "And the right side?", "What changed since before?", "Please answer briefly.",
    "What time of day does it look like?", "Count the stripes for me.", "Thanks, one more question.",
    "Where would you put this picture?", "Can you summarise what we said?", "Say it again, slower.",
    "What was my first question?", "Is the sound clear?", "Give me a short title for it.",
    "What would you change?", "Goodbye for now.",
]


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speech(folder: Path, index: int) -> Path:
    wav = folder / f"turn{index}.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SENTENCES[index % len(SENTENCES)]], check=True)
    return wav


def clip(folder: Path, index: int) -> Path:
    """A webcam-sized clip with the turn's speech as its sound."""
    out = folder / f"turn{index}.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=640x480:rate=15,hue=h={index * 30}", "-i", str(speech(folder, index)),
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                    str(out)], check=True)
    return out


def answer(service: ModelService, conversation: Conversation, session: str | None, seed: int) -> dict:
    """One reply: its times (from the service's stats), text and trace; or the error."""
    request = Request(conversation, voice="Chelsie", limits=LIMITS, seed=seed, session=session)
    try:
        events = list(service.stream(request))
    except Exception as exc:  # a failed turn is counted, the conversation goes on
        return {"error": f"{type(exc).__name__}: {exc}"}
    done = events[-1]
    assert isinstance(done, Done)
    return {"ttft": done.stats.time_to_first_text, "ttfa": done.stats.time_to_first_audio,
            "text": "".join(e.text for e in events if isinstance(e, TextDelta)), "trace": done.trace,
            "reused": int(done.stats.extra.get("reused_tokens", 0)),
            "prompt": int(done.stats.extra.get("prompt_tokens", len(done.trace.prompt_ids)))}


def conversation_run(service: ModelService, name: str, turns: list) -> str:
    """Run one scripted conversation; prints its table and returns its summary line."""
    print(f"\n{name}: {len(turns)} turns (cached | no cache)")
    print(f"{'turn':>4} {'ttft_c':>7} {'ttft_f':>7} {'ttfa_c':>7} {'ttfa_f':>7} {'prompt':>7} {'reused':>7} "
          f"{'equal':>5} {'rss_mb':>7}")
    conversation, failures, rows, peak = Conversation(), 0, [], rss_mb()
    session = f"bench-{name}"
    for index, parts in enumerate(turns):
        conversation = conversation.add_user(*parts)
        order = [session, None] if index % 2 == 0 else [None, session]
        results = {key: answer(service, conversation, key, seed=index) for key in order}
        cached, full = results[session], results[None]
        failed = [r["error"] for r in (cached, full) if "error" in r]
        failures += len(failed)
        peak = max(peak, rss_mb())
        if failed:
            print(f"{index + 1:>4} failed: {failed[0]}")
            conversation = conversation.add_assistant("…")
            continue
        equal = (cached["trace"].reply_ids == full["trace"].reply_ids and cached["trace"].codes == full["trace"].codes)
        rows.append((cached["ttft"], full["ttft"]))
        print(f"{index + 1:>4} {cached['ttft']:7.3f} {full['ttft']:7.3f} {cached['ttfa'] or 0:7.3f} "
              f"{full['ttfa'] or 0:7.3f} {cached['prompt']:7d} {cached['reused']:7d} {str(equal):>5} {rss_mb():7.0f}")
        conversation = conversation.add_assistant(cached["text"] or "…")
    service.end_session(session)
    ratio_c = rows[-1][0] / rows[0][0] if rows else float("nan")
    ratio_f = rows[-1][1] / rows[0][1] if rows else float("nan")
    return (f"{name}: turns={len(turns)} ttft_last_over_first={ratio_c:.2f} (no cache: {ratio_f:.2f}) "
            f"peak_rss_mb={peak:.0f} failures={failures}")


LIMITS = GenerationLimits(max_new_tokens=24, max_speech_seconds=1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video-turns", type=int, default=12)
    parser.add_argument("--voice-turns", type=int, default=20)
    args = parser.parse_args()
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: run scripts/setup.sh")
    service = ModelService.from_config(ServiceConfig(model="tiny"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = [[VideoPart(load_video(clip(folder, i)))] for i in range(args.video_turns)]
        voice = [[AudioPart(load_audio(speech(folder, i)))] for i in range(args.voice_turns)]
    # Warm every encoder and stage once, so that the first timed turn pays no first-call costs.
    for parts in (video[0], voice[0]):
        answer(service, Conversation().add_user(*parts), None, seed=0)
    summaries = [conversation_run(service, "video_chat", video), conversation_run(service, "voice_chat", voice)]
    print()
    for line in summaries:
        print(line)


if __name__ == "__main__":
    main()
