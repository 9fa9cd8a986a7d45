"""What the model service keeps per conversation between turns, within a memory budget.

A conversation (``Request.session``) keeps its prompt memo (each media item's token
layout) and, with the streaming engine, the model's KV caches after its last reply: the
Thinker's for the prompt and reply, the Talker's for the prompt rows. The next turn runs
only what is new. Nothing here trusts the caller: whether a cache fits the next prompt
is decided by comparing token ids, media fingerprints and positions
(:meth:`CachedPrefix.reusable`). Caches beyond the budget are dropped least recently
used first; a dropped cache costs one full prefill, nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..media_items import PromptMemo
from ..prompt import PreparedInputs
from .budget import Dropped

log = logging.getLogger(__name__)

#: Conversations whose state (memo, caches) is kept at most; the least recently used go first.
MAX_SESSIONS = 1024


def crop_cache(cache, length: int):
    """``cache`` cut to its first ``length`` tokens, in tensors of their own (the rest is freed)."""
    if length == cache.get_seq_length():
        return cache  # nothing to cut: copying every layer (~1 GB at 16k tokens of the 7B) would buy nothing
    cache.crop(length - cache.get_seq_length())
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None:
            layer.keys = layer.keys.clone()
            layer.values = layer.values.clone()
    return cache


def cache_bytes(cache) -> int:
    """Bytes held by a DynamicCache's keys and values."""
    if cache is None:
        return 0
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class CachedPrefix:
    """A conversation as the model last ran it: the KV caches and exactly what they hold."""

    #: Tokens in the Thinker cache (prompt, then the reply tokens fed back).
    ids: np.ndarray
    #: Media items among them: start -> (fingerprint, end).
    media: dict[int, tuple[str, int]]
    use_audio_in_video: bool
    #: ``(4, 1, n)`` positions the Thinker ran them at.
    positions: torch.Tensor
    cache: object
    #: ``(1, n, hidden)`` Talker input rows of the same tokens.
    rows: torch.Tensor
    #: The Talker's cache of its first prompt rows, and their ``(3, 1, m)`` positions.
    talker_cache: object = None
    talker_positions: torch.Tensor | None = None
    nbytes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.nbytes = (cache_bytes(self.cache) + cache_bytes(self.talker_cache) + self.ids.nbytes
                       + self.rows.numel() * self.rows.element_size() + self.positions.numel() * 8
                       + (self.talker_positions.numel() * 8 if self.talker_positions is not None else 0))

    @property
    def length(self) -> int:
        return len(self.ids)

    def reusable(self, prepared: PreparedInputs, positions: torch.Tensor) -> int:
        """How many of ``prepared``'s first tokens this cache holds exactly as a full prefill would make them.

        Token ids must agree (a reply's ids need not re-tokenize to themselves), every
        media item in the prefix must be the same media (fingerprint and span) and whole,
        and the positions must be those of ``get_rope_index`` over the new prompt. At least
        the prompt's last token is left to run: its logits give the first reply token.
        """
        if prepared.use_audio_in_video != self.use_audio_in_video:
            return 0
        new = prepared.input_ids[0].numpy()
        n = min(len(new) - 1, self.length)
        differ = np.flatnonzero(new[:n] != self.ids[:n])
        if len(differ):
            n = int(differ[0])
        for span in prepared.media:
            if span.start >= n:
                break
            if span.end > n or self.media.get(span.start) != (span.fingerprint, span.end):
                n = span.start
                break
        if n and not torch.equal(self.positions[:, :, :n], positions[:, :, :n].to(self.positions.device)):
            log.warning("cached positions differ from the prompt's; running the whole prompt")
            return 0
        return n

    def cropped(self, n: int) -> CachedPrefix:
        """The first ``n`` tokens (the Talker's rows up to there); the caches are cut in place."""
        talker = min(n, self.talker_positions.shape[-1]) if self.talker_positions is not None else 0
        return CachedPrefix(
            self.ids[:n], {s: v for s, v in self.media.items() if v[1] <= n}, self.use_audio_in_video,
            self.positions[:, :, :n], crop_cache(self.cache, n), self.rows[:, :n].clone(),
            crop_cache(self.talker_cache, talker) if talker else None,
            self.talker_positions[:, :, :talker] if talker else None,
        )


@dataclass
class SessionState:
    """Everything the service keeps for one conversation."""

    memo: PromptMemo = field(default_factory=PromptMemo)
    cached: CachedPrefix | None = None
    #: What the context budget left out of this conversation's last prompt.
    dropped: Dropped = field(default_factory=Dropped)


class SessionStates:
    """Per-conversation state, least recently used first, caches within ``budget_bytes``."""

    def __init__(self, budget_bytes: int, max_sessions: int = MAX_SESSIONS) -> None:
        self.budget_bytes = budget_bytes
        self.max_sessions = max_sessions
        self._states: OrderedDict[str, SessionState] = OrderedDict()
        self._lock = threading.Lock()

    def state(self, session: str) -> SessionState:
        """The state of ``session`` (created if new), now the most recently used."""
        with self._lock:
            state = self._states.get(session)
            if state is None:
                state = self._states[session] = SessionState()
                while len(self._states) > self.max_sessions:
                    self._states.popitem(last=False)
            self._states.move_to_end(session)
            return state

    def take(self, session: str, state: SessionState) -> CachedPrefix | None:
        """Take the session's cache out for one generation (nobody else can use or free it meanwhile)."""
        with self._lock:
            cached, state.cached = state.cached, None
            return cached

    def keep(self, session: str, state: SessionState, cached: CachedPrefix | None) -> None:
        """Store the cache after a generation, unless the session ended meanwhile; then fit the budget."""
        with self._lock:
            if self._states.get(session) is not state:
                return
            state.cached = cached
            self._fit()

    def end(self, session: str) -> None:
        """Forget a conversation (its caches are freed)."""
        with self._lock:
            self._states.pop(session, None)

    @property
    def nbytes(self) -> int:
        """Bytes of the caches kept now (what the budget counts)."""
        with self._lock:
            return sum(s.cached.nbytes for s in self._states.values() if s.cached is not None)

    def __len__(self) -> int:
        return len(self._states)

    def _fit(self) -> None:
        total = sum(s.cached.nbytes for s in self._states.values() if s.cached is not None)
        for state in self._states.values():  # least recently used first
            if total <= self.budget_bytes:
                break
            if state.cached is not None:
                total -= state.cached.nbytes
                state.cached = None


@dataclass
class CacheSlot:
    """One generation's access to its conversation's cache."""

    states: SessionStates
    session: str
    state: SessionState

    def take(self) -> CachedPrefix | None:
        return self.states.take(self.session, self.state)

    def keep(self, cached: CachedPrefix | None) -> None:
        self.states.keep(self.session, self.state, cached)


def after_turn(prepared: PreparedInputs, thinker, talker, before: CachedPrefix | None) -> CachedPrefix | None:
    """What a conversation keeps after a reply: the Thinker's cache of prompt and reply, the Talker's of the prompt.

    ``before`` is the (cropped) cache the turn started from: it still stands when the
    turn stopped before running anything, and its Talker rows do when this turn did not speak.
    """
    if thinker.prompt_rows is None:  # cancelled before the prompt ran
        return before
    length = thinker.cache.get_seq_length()
    ids = np.concatenate([prepared.input_ids[0].numpy(), np.asarray(thinker.tokens, dtype=np.int64)])[:length]
    media = {m.start: (m.fingerprint, m.end) for m in prepared.media}
    prompt = prepared.prompt_tokens
    talker_cache = talker_positions = None
    if talker is not None and talker.positions is not None:
        talker_cache, talker_positions = crop_cache(talker.cache, prompt), talker.positions[:, :, :prompt]
    elif before is not None and before.talker_cache is not None:
        talker_cache, talker_positions = before.talker_cache, before.talker_positions
    return CachedPrefix(ids, media, prepared.use_audio_in_video, thinker.all_positions()[:, :, :length], thinker.cache,
                        thinker.rows()[:, :length], talker_cache, talker_positions)
