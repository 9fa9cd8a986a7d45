"""How long a pause should end a spoken turn: false cuts against waiting, measured.

    python bench/vad_pauses.py            # the table below, about a minute on 2 cores
    python bench/vad_pauses.py --quick    # fewer questions and settings

Spoken questions (espeak-ng, SSML) carry one natural pause in the middle, of 200 to
1000 ms. Each is fed to the app's turn detector (omni_app.vad, silero-vad) the way the
browser sends it: 48 kHz int16 in 0.1 s chunks, with silence after. For every end-of-turn
setting it prints, per length of the pause inside the question, the share of questions
cut in two (a false cut: the model would answer half a question), and how long after the
end of the speech the turn ended (the wait every turn pays). The last line names the
shortest setting that cuts none of the questions whose pause is at most 600 ms:
`choice_ms=...`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni_app.vad import TurnDetector, TurnEnded, VadOptions  # noqa: E402

#: Questions with one pause where people pause: after a lead-in, between clauses, while thinking.
QUESTIONS = [
    "I was wondering, {pause} could you tell me what the weather is like?",
    "Look at this picture. {pause} What do you see in it?",
    "So, um, {pause} what time is it in Tokyo right now?",
    "Can you describe {pause} in one sentence what happens here?",
    "Tell me {pause} which is the tallest mountain in Europe.",
    "My question is about cooking. {pause} How long should I boil an egg?",
]
PAUSES_MS = [200, 400, 600, 800, 1000]
SETTINGS_MS = [300, 400, 500, 600, 700, 800, 1000]
RATE = 48000
CHUNK = RATE // 10  # the app's microphone chunk (0.1 s)
#: A sample above this (about -40 dBFS) is speech, for finding where the speech ends.
SPEECH_LEVEL = 0.01


def speak(text: str, pause_ms: int, folder: Path) -> np.ndarray:
    """espeak-ng speech with an SSML break, at 48 kHz int16, 0.3 s before and 2.5 s after."""
    ssml = "<speak>" + text.format(pause=f'<break time="{pause_ms}ms"/>') + "</speak>"
    raw, wav = folder / "raw.wav", folder / "q.wav"
    subprocess.run(["espeak-ng", "-m", "-w", str(raw), ssml], check=True)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(wav), "pad", "0.3", "2.5"],
                   check=True)
    import soundfile as sf

    data, _ = sf.read(str(wav), dtype="int16")
    return data


def speech_end(samples: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(samples.astype(np.float32) / 32768) > SPEECH_LEVEL)
    return (loud[-1] + 1) / RATE


def turns(samples: np.ndarray, silence_ms: int, detector: TurnDetector) -> list[float]:
    """When each turn ended (seconds into the recording: the end of the chunk that ended it)."""
    detector.reset()
    detector.set_min_silence(silence_ms)
    ended = []
    for start in range(0, len(samples), CHUNK):
        piece = samples[start:start + CHUNK]
        if any(isinstance(e, TurnEnded) for e in detector.feed(RATE, piece)):
            ended.append((start + len(piece)) / RATE)
    return ended


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three questions, four settings")
    args = parser.parse_args(argv)
    questions = QUESTIONS[:3] if args.quick else QUESTIONS
    settings = [400, 600, 700, 1000] if args.quick else SETTINGS_MS
    detector = TurnDetector(VadOptions())
    recordings = {}
    with tempfile.TemporaryDirectory() as folder:
        for pause in PAUSES_MS:
            for text in questions:
                recordings[(pause, text)] = speak(text, pause, Path(folder))

    cut = {}  # (setting, pause) -> share of questions cut in two
    waits = {}  # setting -> seconds from the end of the speech to the end of the turn
    for setting in settings:
        waits[setting] = []
        for pause in PAUSES_MS:
            cuts = 0
            for text in questions:
                samples = recordings[(pause, text)]
                ended = turns(samples, setting, detector)
                cuts += len(ended) > 1
                if ended:
                    waits[setting].append(ended[-1] - speech_end(samples))
            cut[(setting, pause)] = cuts / len(questions)

    columns = " | ".join(f"cut @{p} ms" for p in PAUSES_MS)
    header = f"end-of-turn pause | {columns} | wait after speech (median, max)"
    print(header)
    print("-" * len(header))
    for setting in settings:
        row = " | ".join(f"{cut[(setting, p)]:>9.0%}" for p in PAUSES_MS)
        wait = waits[setting]
        print(f"{setting:>14} ms | {row} | {statistics.median(wait):.2f} s, {max(wait):.2f} s")
    safe = [s for s in settings if all(cut[(s, p)] == 0 for p in PAUSES_MS if p <= 600)]
    choice = min(safe) if safe else max(settings)
    print(f"\nquestions={len(questions)} pauses_ms={PAUSES_MS} (each question once per pause)")
    print(f"choice_ms={choice} wait_s={statistics.median(waits[choice]):.2f} "
          f"cut_at_800ms={cut[(choice, 800)]:.0%} current_default_ms={VadOptions().min_silence_ms}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
