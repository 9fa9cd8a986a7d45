"""Per-reply timing: the time each stage took (a share of each batched step), and what happened when."""

from __future__ import annotations

import time


class StageClock:
    """Seconds per stage (Thinker, Talker, code2wav), counts, and a timeline of tokens, codes and chunks.

    Work done for one reply alone is timed whole; a batched step's time is split evenly
    among the replies in it, so the stages add up to this reply's share of the model.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds = {"thinker": 0.0, "talker": 0.0, "code2wav": 0.0}
        self.timeline: list[tuple[float, str, int]] = []
        self.counts = {"token": 0, "code": 0, "chunk": 0}
        #: Replies in each batched step this reply took part in (itself included).
        self.batch_sizes: list[int] = []

    def timed(self, stage: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def share(self, stage: str, seconds: float, replies: int) -> None:
        """This reply's part of a batched step of ``replies`` that took ``seconds``."""
        self.seconds[stage] += seconds / replies
        self.batch_sizes.append(replies)

    def mark(self, kind: str) -> None:
        """Count one token, code or chunk and note when it happened."""
        self.counts[kind] += 1
        self.timeline.append((time.perf_counter() - self.started, kind, self.counts[kind]))

    @property
    def tokens(self) -> int:
        return self.counts["token"]

    @property
    def codes(self) -> int:
        return self.counts["code"]

    @property
    def batch_peak(self) -> int:
        """The most replies made in one step together with this one (itself included)."""
        return max(self.batch_sizes, default=1)

    def stats(self) -> dict[str, float]:
        tokens, codes = self.tokens, self.codes
        extra = {f"{k}_seconds": v for k, v in self.seconds.items()}
        if self.seconds["thinker"] > 0:
            extra["thinker_tokens_per_s"] = tokens / self.seconds["thinker"]
        if self.seconds["talker"] > 0:
            extra["talker_codes_per_s"] = codes / self.seconds["talker"]
        if codes:
            extra["code2wav_rtf"] = self.seconds["code2wav"] / (codes / 50.0)
        if self.batch_sizes:
            extra["batch_mean"] = sum(self.batch_sizes) / len(self.batch_sizes)
        return extra
