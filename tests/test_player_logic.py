"""The speech player's play-out logic on its own, with synthetic arrival times.

The page's AudioWorklet runs omni_app/ui/js/playout.js; tests/js/playout_sim.js runs the
same file under node, one render quantum at a time, and reports what came out: the
events (start, gap, done, stopped), the stretches of sound and the largest step between
two output samples (every chunk is a constant, so a step is the gain moving: a click
would be a big one).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parent / "js" / "playout_sim.js"
NODE = shutil.which("node")
SR = 24000
RAMP = round(0.005 * SR)
#: A chunk is 0.5; the gain moves by at most 1/RAMP per sample.
MAX_STEP = 0.5 / RAMP + 1e-6
#: The streaming engine's chunk lengths for a 6 s reply (0.24 s blocks, 3-3-6-12, minus the vocoder hold).
CHUNKS = [0.52, 0.72, 1.44, 2.88, 0.44]

pytestmark = pytest.mark.skipif(NODE is None, reason="needs node (apt-get install nodejs)")


def simulate(actions: list[dict], duration: float, **options) -> dict:
    scenario = {"sampleRate": SR, "duration": duration, "actions": actions, "options": options}
    out = subprocess.run([NODE, str(SIM)], input=json.dumps(scenario), capture_output=True, text=True,
                         timeout=60, check=True)
    result = json.loads(out.stdout)
    result["by_type"] = {}
    for event in result["events"]:
        result["by_type"].setdefault(event["type"], []).append(event)
    return result


def production(rate: float, chunks=CHUNKS, lead: float = 0.1, reply: str = "a", start: float = 0.0,
               stall: tuple[int, float] | None = None) -> list[dict]:
    """A reply made at ``rate`` seconds of speech per second, reported as the server reports it.

    ``stall=(k, s)`` delays chunk k and every later one by ``s`` seconds, unannounced.
    """
    limit = sum(chunks)
    actions = [{"t": start, "do": "begin", "id": reply}]
    produced, t = 0.0, start
    for k, seconds in enumerate(chunks):
        produced += seconds
        t = start + lead + produced / rate + (stall[1] if stall and k >= stall[0] else 0.0)
        actions.append({"t": t, "do": "push", "id": reply, "seconds": seconds, "rate": produced / (t - start),
                        "left": limit - produced})
    actions.append({"t": t, "do": "end", "id": reply})
    return actions


def gap_free_start(actions: list[dict]) -> float:
    """The earliest start at which no chunk arrives after its turn to play."""
    pushes = [a for a in actions if a["do"] == "push"]
    before, latest = 0.0, 0.0
    for push in pushes:
        latest = max(latest, push["t"] - before)
        before += push["seconds"]
    return latest


def test_fast_production_starts_at_once_and_plays_without_a_gap():
    actions = production(6.0)
    result = simulate(actions, 8)
    start = result["by_type"]["start"][0]
    assert start["delay"] <= 128 / SR  # within one render quantum of the first chunk
    assert "gap" not in result["by_type"]
    assert len(result["sound"]) == 1
    (begin, end), = result["sound"]
    assert end - begin == pytest.approx(sum(CHUNKS), abs=0.002)
    assert result["maxStep"] <= MAX_STEP


@pytest.mark.parametrize("rate", [0.4, 0.7, 1.0, 1.5])
def test_slower_production_waits_just_long_enough(rate):
    actions = production(rate)
    result = simulate(actions, 40)
    start = result["by_type"]["start"][0]["t"]
    done = result["by_type"]["done"][0]
    assert "gap" not in result["by_type"] and done["gaps"] == 0
    assert len(result["sound"]) == 1
    assert start >= gap_free_start(actions) - 0.01
    # Not much later than needed: the rule only knows the rate so far and a bound on what is left.
    assert start <= gap_free_start(actions) + 0.25 * sum(CHUNKS), (start, gap_free_start(actions))


def test_a_long_reply_on_a_slow_machine_starts_early_and_pauses_once():
    # 13.6 s of speech made at 0.4x real time: playing it without any pause would mean
    # 20 s of silence first; the player looks a few seconds ahead instead.
    actions = production(0.4, chunks=[0.52, 0.72, 1.44, 2.88, 2.88, 2.88, 2.88, 0.3])
    result = simulate(actions, 45)
    assert result["by_type"]["start"][0]["t"] < gap_free_start(actions) - 5
    assert len(result["by_type"]["gap"]) == 1 and len(result["sound"]) == 2
    assert result["maxStep"] <= MAX_STEP


def test_production_falling_behind_pauses_once_and_resumes_cleanly():
    actions = production(2.0, stall=(2, 1.5))
    result = simulate(actions, 12)
    gaps = result["by_type"].get("gap", [])
    assert len(gaps) == 1
    assert len(result["sound"]) == 2  # one pause: two stretches of sound
    (_, pause_from), (pause_to, _) = result["sound"]
    assert gaps[0]["seconds"] == pytest.approx(pause_to - pause_from, abs=0.002)
    assert result["by_type"]["done"][0]["gapSeconds"] == pytest.approx(gaps[0]["seconds"])
    assert sum(end - begin for begin, end in result["sound"]) == pytest.approx(sum(CHUNKS), abs=0.003)
    assert result["maxStep"] <= MAX_STEP  # fades at both sides of the pause: no click


def test_stop_silences_at_once_and_drops_the_rest():
    actions = production(3.0) + [{"t": 1.0, "do": "stop"}]
    result = simulate(actions, 6)
    assert result["lastSound"] - 1.0 <= 128 / SR + 0.005 + 1e-6  # the next quantum, then a 5 ms fade
    assert result["by_type"]["stopped"][0]["reply"] == "a"
    assert "done" not in result["by_type"]
    assert result["maxStep"] <= MAX_STEP


def test_chunks_after_a_stop_are_not_played():
    actions = production(0.8) + [{"t": 0.3, "do": "stop", "id": "a"}]
    result = simulate(actions, 12)
    assert result["lastSound"] is None
    assert result["by_type"]["stopped"][0]["reply"] == "a"


def test_a_new_reply_never_overlaps_the_old_one():
    first = production(3.0, reply="a")
    second = production(3.0, reply="b", start=1.0, chunks=[0.52, 0.3])
    result = simulate(first + second, 6)
    stopped = result["by_type"]["stopped"][0]
    started = [e for e in result["by_type"]["start"] if e["reply"] == "b"][0]
    assert stopped["reply"] == "a" and stopped["frame"] <= started["frame"]
    assert result["by_type"]["done"][0]["reply"] == "b"
    assert result["maxStep"] <= MAX_STEP


def test_a_reply_without_a_rate_waits_for_its_end():
    actions = [{"t": 0, "do": "begin", "id": "a"}, {"t": 0.2, "do": "push", "id": "a", "seconds": 0.5},
               {"t": 1.0, "do": "push", "id": "a", "seconds": 0.5}, {"t": 1.1, "do": "end", "id": "a"}]
    result = simulate(actions, 3)
    assert result["by_type"]["start"][0]["t"] == pytest.approx(1.1, abs=0.006)
    assert result["sound"] == [[pytest.approx(1.1, abs=0.006), pytest.approx(2.1, abs=0.006)]]


def test_an_empty_reply_ends_without_sound():
    result = simulate([{"t": 0, "do": "begin", "id": "a"}, {"t": 0.5, "do": "end", "id": "a"}], 1)
    assert result["by_type"]["done"][0]["played"] == 0 and result["lastSound"] is None
