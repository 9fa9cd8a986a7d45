"""A conversation that fits the model's context: older media, then older turns, left out.

When the prompt plus room for the longest reply would not fit, the oldest audio, images
and videos are replaced by a short marker ("[earlier video, 6 s]"), then the oldest turns
are left out; the newest turn never is, and a turn too large on its own is refused with a
message that says how to shorten it. The history the user sees is not touched: only the
prompt the model gets.

Leaving things out changes the prompt's start, so the conversation's cache must run again
from there. To keep that rare, more is left out at once (about a quarter of the context),
and what was left out for a conversation stays out while it goes on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..conversation import AudioPart, Conversation, ImagePart, TextPart, Turn, VideoPart
from ..errors import RequestError
from ..prompt import PreparedInputs

#: What is freed at once, as a share of the context, when something must be left out.
STEP_SHARE = 0.25


@dataclass(frozen=True)
class Dropped:
    """What was left out of a conversation: fingerprints of its media, digests of its turns (oldest first)."""

    media: tuple[str, ...] = ()
    turns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fit:
    """The prompt the model gets and what was left out to make it fit."""

    conversation: Conversation
    prepared: PreparedInputs
    dropped: Dropped = Dropped()
    kinds: tuple[str, ...] = ()

    def notice(self) -> str:
        """One sentence for the user: what the model no longer sees."""
        counts = [(self.kinds.count(kind), kind) for kind in ("video", "image", "audio clip")]
        counts.append((len(self.dropped.turns), "turn"))
        what = [f"the oldest {kind}" if n == 1 else f"the {n} oldest {kind}s" for n, kind in counts if n]
        listed = ", ".join(what[:-1]) + (" and " if len(what) > 1 else "") + what[-1]
        return (f"The conversation has grown past what the model can take at once, so it no longer sees "
                f"{listed}. The chat still shows everything; press Clear to start afresh.")


def fit_context(conversation: Conversation, prepared: PreparedInputs, limit: int, reserve: int,
                prepare: Callable[[Conversation], PreparedInputs], before: Dropped = Dropped()) -> Fit:
    """``conversation`` made to fit ``limit`` tokens with ``reserve`` left for the reply.

    ``before`` is what was left out for this conversation last time: it stays out if the
    conversation still starts the same way. ``prepare`` builds a prompt (with the memo
    of the conversation, so it is cheap).
    """
    if prepared.prompt_tokens + reserve <= limit and not before.media and not before.turns:
        return Fit(conversation, prepared)
    old = conversation.turns[:-1]
    slots = [(t, p) for t, turn in enumerate(old) if turn.role == "user"
             for p, part in enumerate(turn.parts) if not isinstance(part, TextPart)]
    spans = prepared.media[:len(slots)]
    marker_tokens = 8  # "[earlier video, 6 s]", about
    savings = [s.end - s.start + 2 - marker_tokens for s in spans]  # +2: the bos/eos around each item
    fingerprints = tuple(s.fingerprint for s in spans)
    kept_before = len(before.media) if fingerprints[:len(before.media)] == before.media else 0
    count = max(kept_before, _how_many(savings, prepared.prompt_tokens + reserve - limit, int(limit * STEP_SHARE)))
    while True:
        gone = set(slots[:count])
        turns = tuple(Turn(turn.role, tuple(_marker(part) if (t, p) in gone else part
                                            for p, part in enumerate(turn.parts)))
                      for t, turn in enumerate(old))
        trimmed = replace(conversation, turns=turns + conversation.turns[-1:])
        ready = prepare(trimmed)
        if ready.prompt_tokens + reserve <= limit or count >= len(slots):
            break
        count += 1  # the markers' size was only estimated
    dropped = Dropped(fingerprints[:count])
    if ready.prompt_tokens + reserve > limit or before.turns:
        trimmed, ready, dropped = _drop_turns(trimmed, ready, limit, reserve, prepare, dropped, before)
    kinds = tuple("audio clip" if s.kind == "audio" else s.kind for s in spans[:count])
    return Fit(trimmed, ready, dropped, kinds)


def _drop_turns(conversation: Conversation, prepared: PreparedInputs, limit: int, reserve: int, prepare,
                dropped: Dropped, before: Dropped) -> tuple[Conversation, PreparedInputs, Dropped]:
    """Leave out the oldest turns (a user turn with the replies to it) until the prompt fits."""
    sizes = _turn_sizes(conversation, prepared)
    units = []  # (first turn, last turn + 1) of each user turn and its replies, except the newest
    for index, turn in enumerate(conversation.turns[:-1]):
        if turn.role == "user" or not units:
            units.append([index, index + 1])
        else:
            units[-1][1] = index + 1
    digests = tuple(_digest(conversation.turns[a:b]) for a, b in units)
    savings = [sum(sizes[a:b]) for a, b in units]
    kept_before = len(before.turns) if digests[:len(before.turns)] == before.turns else 0
    need = prepared.prompt_tokens + reserve - limit
    count = max(kept_before, _how_many(savings, need, int(limit * STEP_SHARE)))
    while True:
        first = units[count][0] if count < len(units) else len(conversation.turns) - 1
        trimmed = replace(conversation, turns=conversation.turns[first:])
        ready = prepare(trimmed)
        if ready.prompt_tokens + reserve <= limit:
            return trimmed, ready, Dropped(dropped.media, digests[:count])
        if count >= len(units):
            raise RequestError(_too_long(trimmed, ready, limit, reserve))
        count += 1


def _how_many(savings: list[int], need: int, step: int) -> int:
    """The oldest items to leave out to free ``need`` tokens, rounded up to about ``step`` more."""
    if need <= 0:
        return 0
    target = -(-need // step) * step if step > 0 else need
    freed = 0
    for count, saving in enumerate(savings, start=1):
        freed += saving
        if freed >= target:
            return count
    return len(savings)


def _turn_sizes(conversation: Conversation, prepared: PreparedInputs) -> list[int]:
    """About how many tokens each turn takes (its text, its media, the template around it)."""
    tokenizer = prepared.processor.tokenizer
    media = iter(prepared.media)
    sizes = []
    for turn in conversation.turns:
        size = 5  # "<|im_start|>user\n" ... "<|im_end|>\n"
        for part in turn.parts:
            if isinstance(part, TextPart):
                size += len(tokenizer(part.text, add_special_tokens=False)["input_ids"])
            elif turn.role == "user":
                span = next(media)
                size += span.end - span.start + 2
        sizes.append(size)
    return sizes


def _marker(part) -> TextPart:
    if isinstance(part, AudioPart):
        return TextPart(f"[earlier audio, {part.seconds:.0f} s]")
    if isinstance(part, VideoPart):
        return TextPart(f"[earlier video, {part.clip.seconds:.0f} s]")
    assert isinstance(part, ImagePart)
    return TextPart("[earlier image]")


def _digest(turns) -> str:
    digest = hashlib.sha256()
    for turn in turns:
        digest.update(f"{turn.role}:{turn.text}\x00".encode())
    return digest.hexdigest()[:16]


def _too_long(conversation: Conversation, prepared: PreparedInputs, limit: int, reserve: int) -> str:
    turn = conversation.turns[-1]
    media = [p for p in turn.parts if not isinstance(p, TextPart)]
    seconds = sum(p.seconds if isinstance(p, AudioPart) else p.clip.seconds for p in media
                  if isinstance(p, (AudioPart, VideoPart)))
    room = max(0, limit - reserve)
    message = (f"This message is too long for the model: it takes {prepared.prompt_tokens} tokens and the reply "
               f"needs room for {reserve} more, but the model takes {limit} in all.")
    if seconds > 0:
        fits = seconds * room / max(prepared.prompt_tokens, 1)
        return message + f" Send a shorter recording or video (about {max(1, int(fits))} s fit) or less text."
    if media:
        return message + " Send a smaller image or fewer images, or less text."
    return message + " Shorten the text."
