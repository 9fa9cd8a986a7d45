"""One reply of a realtime connection: its speech and transcript stream out as they are made.

The reply goes through the server's admission and the model's scheduler like any request.
A cancel (``response.cancel``, or the person speaking over it) sets its token: nothing more
goes out, the model stops within a step, and ``response.done`` says why.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from ..api import CancelToken, Request
from ..config import SPEECH_SAMPLE_RATE
from ..conversation import Conversation, TextPart, Turn
from ..events import AudioChunk, Done, TextDelta
from .bridge import END
from .pcm import b64, pcm16
from .realtime_wire import ClientTooSlow, Ids, RealtimeConfig, message_item, response_json
from .state import ServerState


class Connection(Protocol):
    """What a reply needs of its connection (:class:`~.realtime.RealtimeConnection`)."""

    id: str
    state: ServerState
    ids: Ids
    conversation: Conversation
    #: Set once the reply holds the model: cancelling it stops the reply.
    reply_cancel: CancelToken | None
    #: Why the reply was cancelled (``response.done`` says it).
    cancel_reason: str

    async def send(self, event: dict) -> None: ...

    async def refuse(self, exc: Exception, client_event: str | None) -> None: ...

    def add_turn(self, item_id: str, turn: Turn, speech_seconds: float = 0.0) -> None: ...


async def run_reply(conn: Connection, response_id: str, config: RealtimeConfig) -> None:
    """Answer the conversation so far: the reply streams out as it is made, then it joins the conversation."""
    conversation = conn.conversation
    if config.instructions.strip():
        conversation = replace(conversation, system_prompt=f"{conversation.system_prompt}\n\n{config.instructions}")
    request = Request(conversation, voice=config.voice if config.speaks else None,
                      limits=config.limits(conn.state.settings.limits), session=conn.id)
    item_id = conn.ids("item")
    text, samples, done, status, reason = "", 0, None, "completed", None
    base = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
    conn.cancel_reason = "client_cancelled"
    pump = None
    try:
        async with conn.state.admitted() as place:
            pump = conn.state.open(request, place)
        conn.reply_cancel = pump.cancel
        await conn.send({"type": "response.created", "response": response_json(response_id, "in_progress", [],
                                                                                config)})
        part = {"type": "audio" if config.speaks else "text", "transcript" if config.speaks else "text": ""}
        await conn.send({"type": "response.output_item.added", "response_id": response_id, "output_index": 0,
                         "item": message_item(item_id, "assistant", [], "in_progress")})
        await conn.send({"type": "response.content_part.added", **base, "part": part})
        while (event := await pump.next()) is not END:
            if isinstance(event, Done):
                done = event
            elif pump.cancel.is_set():
                continue  # cancelled: nothing more goes out, the model stops within a step
            elif isinstance(event, TextDelta):
                text += event.text
                kind = "response.output_audio_transcript.delta" if config.speaks else "response.output_text.delta"
                await conn.send({"type": kind, **base, "delta": event.text})
            elif isinstance(event, AudioChunk):
                samples += len(event.samples)
                await conn.send({"type": "response.output_audio.delta", **base,
                                 "delta": b64(pcm16(event.samples))})
    except ClientTooSlow:
        raise
    except Exception as exc:
        status = "failed"
        if pump is not None:
            pump.failed = True
        await conn.refuse(exc, None)
    finally:
        if pump is not None:
            pump.close()
    if status != "failed" and done is not None and done.reason == "cancelled":
        status, reason = "cancelled", conn.cancel_reason
    elif status != "failed" and done is not None and done.reason == "length":
        status, reason = "incomplete", "max_output_tokens"
    seconds = samples / SPEECH_SAMPLE_RATE
    content = [{"type": "output_audio", "transcript": text} if config.speaks else {"type": "output_text",
                                                                                     "text": text}]
    item = message_item(item_id, "assistant", content, "completed" if status == "completed" else "incomplete")
    if text.strip():
        conn.add_turn(item_id, Turn("assistant", (TextPart(text),)), seconds)
    if pump is not None:
        if config.speaks:
            await conn.send({"type": "response.output_audio.done", **base})
            await conn.send({"type": "response.output_audio_transcript.done", **base, "transcript": text})
        else:
            await conn.send({"type": "response.output_text.done", **base, "text": text})
        await conn.send({"type": "response.content_part.done", **base, "part": content[0]})
        await conn.send({"type": "response.output_item.done", "response_id": response_id, "output_index": 0,
                         "item": item})
    await conn.send({"type": "response.done", "response": response_json(
        response_id, status, [item] if pump is not None else [], config, done, reason)})
