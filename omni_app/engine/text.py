"""Turning generated token ids into text deltas that never split a character."""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decode a growing list of token ids into complete-character deltas.

    Byte-level BPE tokens can end in the middle of a UTF-8 sequence (CJK and emoji often
    do); such a tail decodes to U+FFFD and is held back until the next token completes it.
    """

    def __init__(self, tokenizer, max_holdback: int = 4) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = ""
        self._max_holdback = max_holdback
        self._held = 0

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return self._emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the new complete text (possibly empty)."""
        self._ids.append(int(token_id))
        full = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if full.endswith(REPLACEMENT) and self._held < self._max_holdback:
            # Possibly an incomplete multi-byte character: wait for the next token.
            self._held += 1
            return ""
        self._held = 0
        return self._take(full)

    def flush(self) -> str:
        """Whatever is still held back (a truly invalid byte sequence stays as U+FFFD)."""
        if not self._ids:
            return ""
        return self._take(self._tokenizer.decode(self._ids, skip_special_tokens=True))

    def _take(self, full: str) -> str:
        if full.startswith(self._emitted):
            delta = full[len(self._emitted):]
        else:
            # Decoding is not always prefix-stable (clean-up rules); emit only the new tail.
            common = 0
            for a, b in zip(full, self._emitted, strict=False):
                if a != b:
                    break
                common += 1
            delta = full[max(common, len(self._emitted)):]
        self._emitted += delta
        return delta


class TokenStreamer:
    """A transformers streamer that hands each generated token id to a callback.

    generate() first calls ``put`` with the prompt; that call is skipped.
    """

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self._on_token = on_token
        self._seen_prompt = False
        self.count = 0

    def put(self, value) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        for token_id in value.reshape(-1).tolist():
            self.count += 1
            self._on_token(token_id)

    def end(self) -> None:
        pass
