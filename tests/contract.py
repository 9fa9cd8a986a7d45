"""The contract every backend keeps, as checks that any backend can be put through.

:func:`run_contract` drives a :class:`~omni_app.api.Backend` through each case and returns
what happened as plain data (JSON-safe, so a backend in another process can report it);
:func:`assert_contract` says whether that is what the contract asks. The in-process and
remote backends run it in tests/test_contract.py, Ray Serve's replicas in test_ray.py and
the ZeroGPU runner in zerogpu_checks.py.

The contract:
- a reply is events ending with exactly one ``Done``, whose ``Stats`` have one shape: times
  since ``stream`` was called, first text and first audio kept where they were seen (on
  success and on cancel), the speech's length equal to the chunks', counts of what was made;
- cancelling while the reply speaks, while the prompt is read, or while the request waits
  for the model ends the stream with ``Done("cancelled")``, at most one more chunk of
  speech after the cancel, and the model is free for the next request;
- the same bad request raises the same error type everywhere;
- a request that waits for the model is told its place.
"""

from __future__ import annotations

import threading
import time

from omni_app.api import CancelToken, Request
from omni_app.config import GenerationLimits
from omni_app.conversation import Conversation
from omni_app.events import AudioChunk, Done, Notice, TextDelta

SHORT = GenerationLimits(max_new_tokens=16, max_speech_seconds=1.0)
#: Long enough that a reply is still running whenever the checks cancel it.
LONG = GenerationLimits(max_new_tokens=400, max_speech_seconds=30.0)
#: Audio chunks allowed after a cancel: one may be on its way.
AFTER_CANCEL = 1
#: A prompt the tiny model reads for a second or two (~5700 tokens).
LONG_PROMPT = "Tell me everything. " * 400


def request(text: str = "Say something.", limits=SHORT, voice: str | None = "Chelsie") -> Request:
    return Request(Conversation().add_user(text), voice=voice, limits=limits, seed=7)


def summary(events: list, cancelled_at: int | None = None) -> dict:
    """What a stream did, as plain data."""
    done = [e for e in events if isinstance(e, Done)]
    last = events[-1] if events else None
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    out = {
        "dones": len(done), "ends_with_done": isinstance(last, Done),
        "texts": sum(isinstance(e, TextDelta) for e in events), "chunks": len(chunks),
        "chunk_seconds": sum(c.seconds for c in chunks),
        "places": [e.queue_position for e in events if isinstance(e, Notice) and e.queue_position is not None],
        "chunks_after_cancel": None if cancelled_at is None else sum(
            isinstance(e, AudioChunk) for e in events[cancelled_at:]),
    }
    if isinstance(last, Done):
        s = last.stats
        out.update(reason=last.reason, first_text=s.time_to_first_text, first_audio=s.time_to_first_audio,
                   total=s.total_time, text_tokens=s.text_tokens, codec_codes=s.codec_codes,
                   audio_seconds=s.audio_seconds)
    return out


def _cancel_on(backend, req: Request, when) -> dict:
    """Stream ``req`` and cancel it when ``when(event)`` says so (``when`` None: before any event)."""
    cancel = CancelToken()
    events: list = []
    at = None
    if when is None:
        # While the prompt is being read: the stream is asked for, and cancelled before anything came.
        timer = threading.Timer(0.05, cancel.cancel)
        timer.start()
        at = 0
    started = time.perf_counter()
    for event in backend.stream(req, cancel):
        events.append(event)
        if at is None and when(event):
            cancel.cancel()
            at = len(events)
    out = summary(events, at)
    out["seconds"] = time.perf_counter() - started
    return out


def _error(backend, req: Request) -> str:
    try:
        for _ in backend.stream(req):
            pass
    except Exception as exc:  # the type is what is compared
        return type(exc).__name__
    return "no error"


def _queued(backend, batch: int, tries: int = 3) -> dict:
    """``batch`` long replies hold the model; one more waits, is told its place, and is cancelled there.

    Where several replicas share the work, a holder may land behind another instead of on a
    free replica and only start when that one ends: then the model was never full, and the
    case is tried again (the report says how many tries it took).
    """
    for attempt in range(1, tries + 1):
        holders = [CancelToken() for _ in range(batch)]
        started = [threading.Event() for _ in range(batch)]
        ended = [threading.Event() for _ in range(batch)]

        def hold(k: int, holders=holders, started=started, ended=ended) -> None:
            try:
                for event in backend.stream(request(f"Tell a long story {k}.", LONG), holders[k]):
                    if isinstance(event, (TextDelta, AudioChunk)):
                        started[k].set()
            finally:
                ended[k].set()
                started[k].set()

        threads = [threading.Thread(target=hold, args=(k,), daemon=True) for k in range(batch)]
        for thread in threads:
            thread.start()
        try:
            for event in started:
                event.wait(120)
            if any(e.is_set() for e in ended):
                continue  # a holder ended before the model was full: not a queue
            out = _cancel_on(backend, request("And me?", LONG),
                             lambda e: isinstance(e, Notice) and e.queue_position is not None)
            out["tries"] = attempt
            return out
        finally:
            for token in holders:
                token.cancel()
            for thread in threads:
                thread.join(120)
    return {"dones": 0, "ends_with_done": False, "texts": 0, "chunks": 0, "chunk_seconds": 0.0, "places": [],
            "chunks_after_cancel": None, "tries": tries}


def run_contract(backend, batch: int | None = None) -> dict:
    """Every case of the contract on ``backend``; ``batch``: replies it makes at once (None: skip the queue case)."""
    report: dict = {}
    report["success"] = summary(list(backend.stream(request())))
    report["cancel_speaking"] = _cancel_on(backend, request(limits=LONG), lambda e: isinstance(e, AudioChunk))
    # How long reading the long prompt takes here, then the same prompt cancelled while it is read.
    report["prefill"] = summary(list(backend.stream(request(LONG_PROMPT))))
    report["cancel_prefill"] = _cancel_on(backend, request(LONG_PROMPT, LONG), None)
    if batch is not None:
        report["cancel_queued"] = _queued(backend, batch)
    report["after_cancels"] = summary(list(backend.stream(request())))
    report["errors"] = {
        "unknown voice": _error(backend, request(voice="Nobody-Such")),
        "empty conversation": _error(backend, Request(Conversation(), voice="Chelsie", limits=SHORT)),
        "nothing to speak": _error(backend, Request(voice="Chelsie", limits=SHORT, speak_text="   ")),
    }
    return report


#: The error each bad request gets, from every backend.
ERRORS = {"unknown voice": "RequestError", "empty conversation": "RequestError", "nothing to speak": "RequestError"}


def problems(report: dict) -> list[str]:
    """Where ``report`` breaks the contract (empty: it keeps it)."""
    found = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            found.append(what)

    for case in ("success", "prefill", "after_cancels"):
        r = report[case]
        check(r["dones"] == 1 and r["ends_with_done"], f"{case}: one Done, at the end")
        check(r.get("reason") in ("finished", "length"), f"{case}: finished ({r.get('reason')})")
        check(r["texts"] > 0 and r["text_tokens"] > 0, f"{case}: text and its count")
        check(r["first_text"] is not None and r["first_text"] <= r["total"], f"{case}: time to first text")
        check(r["chunks"] > 0 and r["first_audio"] is not None and r["first_audio"] <= r["total"],
              f"{case}: speech and time to first audio")
        check(abs(r["audio_seconds"] - r["chunk_seconds"]) < 1e-3, f"{case}: audio_seconds = the chunks' length")
        check(r["codec_codes"] > 0, f"{case}: codes counted")
    for case in ("cancel_speaking", "cancel_prefill", "cancel_queued"):
        if case not in report:
            continue
        r = report[case]
        check(r["dones"] == 1 and r["ends_with_done"] and r.get("reason") == "cancelled", f"{case}: Done(cancelled)")
        check(r["chunks_after_cancel"] is not None and r["chunks_after_cancel"] <= AFTER_CANCEL,
              f"{case}: silent within one step ({r['chunks_after_cancel']} chunks after)")
        check(abs(r.get("audio_seconds", -1) - r["chunk_seconds"]) < 1e-3,
              f"{case}: audio_seconds = the chunks' length")
        check((r.get("first_text") is not None) == (r["texts"] > 0), f"{case}: time to first text kept where known")
        check((r.get("first_audio") is not None) == (r["chunks"] > 0), f"{case}: time to first audio kept where known")
    prefill = report["prefill"].get("first_text") or 0.0
    check(report["cancel_prefill"]["texts"] == 0 and report["cancel_prefill"]["seconds"] < prefill / 2,
          f"cancel_prefill: stopped while the prompt was read ({report['cancel_prefill']['seconds']:.2f} s; "
          f"reading it takes {prefill:.2f} s)")
    if "cancel_speaking" in report:
        check(report["cancel_speaking"]["chunks"] > 0, "cancel_speaking: it spoke before the cancel")
    if "cancel_queued" in report:
        r = report["cancel_queued"]
        check(r["places"][:1] == [1], f"cancel_queued: told its place ({r['places']})")
        check(r["chunks"] == 0 and r["texts"] == 0, "cancel_queued: nothing made while it waited")
    for bad, expected in ERRORS.items():
        check(report["errors"][bad] == expected, f"{bad}: {report['errors'][bad]}, not {expected}")
    return found


def matrix_row(report: dict) -> dict[str, str]:
    """One backend's line of the contract matrix: each case, ok or what broke."""
    broken = problems(report)
    cases = [*report.keys() - {"errors"}, *ERRORS]
    return {case: "; ".join(p for p in broken if p.startswith(case)) or "ok" for case in sorted(cases)}
