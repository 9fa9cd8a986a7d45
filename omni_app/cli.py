"""Command line: ``python -m omni_app chat [options] "text"``.

Prints the reply text as it streams, writes the speech to a 24 kHz WAV, and turns every
user mistake into a one-line message with a non-zero exit code (no traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import DEFAULT_VOICE, ENGINES, MAX_ACTIVE, STOCK_VOICES, GenerationLimits, MediaLimits, ServiceConfig
from .errors import OmniError, unexpected
from .scale.options import add_ray_options, check_ray_options
from .space import commands as space_commands

EXIT_USAGE = 2
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m omni_app",
        description="Talk to Qwen2.5-Omni from the command line: text, audio, image and video in; text and speech out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chat = sub.add_parser(
        "chat", help="send one message and get the reply (text on stdout, speech in --out)",
        description="Send one message with optional media; print the reply and save its speech.",
    )
    chat.add_argument("text", nargs="?", default="", help="the message text (may be empty when media is given)")
    add_backend_options(chat)
    chat.add_argument("--audio", action="append", default=[], metavar="FILE",
                      help="an audio file to send (wav, flac, mp3, ogg, webm, m4a); repeatable")
    chat.add_argument("--image", action="append", default=[], metavar="FILE",
                      help="an image file to send (any common format); repeatable")
    chat.add_argument("--video", action="append", default=[], metavar="FILE",
                      help="a video file to send; its sound track is used when it has one; repeatable")
    chat.add_argument("--voice", default=DEFAULT_VOICE, help="voice of the spoken reply (default: %(default)s; "
                      f"also {', '.join(STOCK_VOICES[1:])})")
    chat.add_argument("--text-only", action="store_true", help="reply in text only, without speech")
    chat.add_argument("--out", type=Path, metavar="WAV", help="write the spoken reply to this 24 kHz WAV file")
    chat.add_argument("--seed", type=int, help="seed for the speech sampling (same seed, same output)")
    chat.add_argument("--max-new-tokens", type=int, default=GenerationLimits.max_new_tokens,
                      help="longest reply in text tokens (default: %(default)s)")
    chat.add_argument("--max-speech-seconds", type=float, default=GenerationLimits.max_speech_seconds,
                      help="longest spoken reply in seconds (default: %(default)s)")
    chat.add_argument("--system-prompt", help="replace the default system prompt (speech may suffer)")
    chat.add_argument("--quiet", action="store_true", help="print only the reply text")

    say = sub.add_parser(
        "say", help="speak exactly the given text and write it to a 24 kHz WAV",
        description="Read a text aloud, word for word, in a stock voice or one made from a reference recording.",
    )
    say.add_argument("text", help="the exact text to speak (long texts are read sentence by sentence)")
    add_backend_options(say)
    say.add_argument("--voice", default=DEFAULT_VOICE, help="stock voice, or the base voice with --voice-ref")
    say.add_argument("--voice-ref", type=Path, metavar="CLIP",
                     help="a 3-30 s recording of one speaker: the voice is rendered with its timbre")
    say.add_argument("--seed", type=int, help="seed for the speech sampling")
    say.add_argument("--max-speech-seconds", type=float, default=GenerationLimits.max_speech_seconds,
                     help="longest speech per sentence in seconds (default: %(default)s)")
    say.add_argument("--out", type=Path, required=True, metavar="WAV", help="where to write the speech")

    serve = sub.add_parser(
        "serve", help="serve the model over an OpenAI-compatible HTTP API",
        description="Load the model once and serve /v1/chat/completions (text and speech, streamed), "
                    "/v1/audio/speech, /v1/models and /health.",
    )
    add_serve_options(serve)
    space_commands.add_parser(sub)
    return parser


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` command's options: a model (or a server to relay), where to listen, what to accept."""
    add_model_options(parser)
    parser.add_argument("--voices-dir", type=Path, help="folder of custom voices: loaded at start; voices made "
                        "through the API with save=true are written there")
    parser.add_argument("--host", default=os.environ.get("OMNI_APP_HOST", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 for every interface; then set an API key)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("OMNI_APP_PORT", 8000)))
    parser.add_argument("--api-key", default=os.environ.get("OMNI_APP_API_KEY"),
                        help="clients must send 'Authorization: Bearer KEY' (default: $OMNI_APP_API_KEY; none: open)")
    parser.add_argument("--max-new-tokens", type=int, default=GenerationLimits.max_new_tokens,
                        help="longest reply in text tokens a client may ask for (default: %(default)s)")
    parser.add_argument("--max-speech-seconds", type=float, default=GenerationLimits.max_speech_seconds,
                        help="longest spoken reply a client may ask for (default: %(default)s)")
    parser.add_argument("--max-body-mb", type=float, help="largest request in MB (default: room for the longest "
                        "audio or video the media limits allow)")
    parser.add_argument("--max-active", type=int, default=MAX_ACTIVE, help="requests in progress at once (generating "
                        "or waiting for the model); more get HTTP 429 (default: %(default)s)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up request at start")
    add_ray_options(parser)
    relay = parser.add_argument_group("relay another server (instead of loading a model here)")
    relay.add_argument("--backend", metavar="URL", help="serve the model of this server (ours, or vLLM-Omni)")
    relay.add_argument("--dialect", choices=["auto", "openai", "vllm-omni"], default="auto",
                       help="how that server streams speech (default: ask it, else openai)")
    relay.add_argument("--backend-api-key", default=os.environ.get("OMNI_APP_BACKEND_API_KEY"),
                       help="bearer token for that server (default: $OMNI_APP_BACKEND_API_KEY)")


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """Where the model is: in this process (the model options) or behind ``--backend URL``."""
    add_model_options(parser)
    parser.add_argument("--voices-dir", type=Path, help="folder of custom voices: loaded at start; the web app's "
                        "voice-cloning tab can save new ones there (model in this process only)")
    remote = parser.add_argument_group("a model on a server (instead of loading one here)")
    remote.add_argument("--backend", metavar="URL", default=os.environ.get("OMNI_APP_BACKEND"),
                        help="an OpenAI-compatible server: 'python -m omni_app serve', a Ray Serve deployment "
                             "of it, or vLLM-Omni (e.g. http://gpu-box:8000)")
    remote.add_argument("--dialect", choices=["auto", "openai", "vllm-omni"], default="auto",
                        help="how the server streams speech (default: ask the server, else openai)")
    remote.add_argument("--api-key", default=os.environ.get("OMNI_APP_API_KEY"),
                        help="bearer token for the server (default: $OMNI_APP_API_KEY)")


def open_backend(args, warmup: bool = False, announce: bool = True):
    """The backend the options name: a remote server, or the model loaded here.

    ``announce`` prints what is being loaded (and that the tiny model is noise) on stdout.
    """
    if args.backend:
        from .serve.remote import RemoteBackend

        backend = RemoteBackend(args.backend, dialect=args.dialect, api_key=args.api_key)
        if announce:
            print(f"omni_app: using the model server at {args.backend} ({backend.info.description})", flush=True)
        return backend
    from .engine.local import LocalBackend

    config = ServiceConfig(model=args.model, device=args.device, dtype=args.dtype, engine=args.engine,
                           session_cache_mb=getattr(args, "session_cache_mb", ServiceConfig.session_cache_mb),
                           max_batch=getattr(args, "max_batch", ServiceConfig.max_batch),
                           compile=getattr(args, "compile", False))
    if announce:
        print(f"omni_app: loading {config.model} ...", flush=True)
    backend = LocalBackend.from_config(config, args.voices_dir)
    if args.voices_dir is not None:
        problems = backend.load_voices()
        for problem in problems:
            print(f"omni_app: warning: {problem} It was skipped.", file=sys.stderr)
        if announce:
            print(f"omni_app: {len(backend.voices()) - len(backend.stock_voices())} custom voice(s) from "
                  f"{args.voices_dir}", flush=True)
    if announce and backend.info.is_tiny:
        print("omni_app: the tiny test model is loaded: its replies are random noise (no GPU found, or --model "
              "tiny). Use --model Qwen/Qwen2.5-Omni-7B on a GPU for real answers.", flush=True)
    if warmup:
        backend.warmup()
    return backend


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose and place a model loaded in this process."""
    parser.add_argument("--model", default=os.environ.get("OMNI_APP_MODEL", "auto"),
                        help="Qwen/Qwen2.5-Omni-7B, Qwen/Qwen2.5-Omni-3B, a local checkpoint folder, 'tiny' "
                             "(a small random model for trying the app offline) or 'auto' (default: the 7B "
                             "on a GPU with room for it, else the 3B on a GPU, else tiny)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="weights precision (auto: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--engine", default=ENGINES[0], choices=list(ENGINES),
                        help="generation engine (default: %(default)s)")
    parser.add_argument("--session-cache-mb", type=int, default=ServiceConfig.session_cache_mb,
                        help="memory for the conversations' model caches, so that each turn runs only what is "
                             "new (default: %(default)s; 0: off)")
    parser.add_argument("--max-batch", type=int, default=ServiceConfig.max_batch,
                        help="replies the model makes at once, in one batch (default: %(default)s; fewer on a GPU "
                             "whose memory can't hold them); more wait in line and are told their place")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the speech decoder (CUDA graphs on a GPU; slower on a CPU)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        if args.command == "chat":
            return _chat(args)
        if args.command == "say":
            return _say(args)
        if args.command == "serve":
            check_ray_options(args)
        if args.command == "serve" and args.ray:
            from .scale.command import run

            return run(args)
        if args.command == "serve":
            from .serve.command import run

            return run(args, open_backend)
        if args.command == "space":
            return space_commands.run(args)
    except OmniError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure still gets one line, not a traceback
        print(f"error: {unexpected(exc, args.command or 'the command', logging.getLogger('omni_app'))}",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_USAGE


def _chat(args) -> int:
    from .api import Request
    from .conversation import AudioPart, Conversation, ImagePart, VideoPart
    from .errors import RequestError
    from .events import AudioChunk, Done, Notice, TextDelta
    from .media import load_audio, load_image, load_video

    if args.out and args.text_only:
        raise RequestError("--out and --text-only can't be used together: there is no speech to write.")
    limits = GenerationLimits(max_new_tokens=args.max_new_tokens, max_speech_seconds=args.max_speech_seconds)
    media = MediaLimits()
    parts: list = [AudioPart(load_audio(f, media)) for f in args.audio]
    parts += [ImagePart(load_image(f, media)) for f in args.image]
    parts += [VideoPart(load_video(f, media)) for f in args.video]
    conversation = Conversation() if args.system_prompt is None else Conversation(system_prompt=args.system_prompt)
    conversation = conversation.add_user(*parts, args.text)

    backend = open_backend(args, announce=False)
    request = Request(conversation, voice=None if args.text_only else args.voice, limits=limits, seed=args.seed)
    chunks = []
    done = None
    for event in backend.stream(request):
        if isinstance(event, TextDelta):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, AudioChunk):
            chunks.append(event)
        elif isinstance(event, Notice):
            print(f"\n{event.level}: {event.message}", file=sys.stderr)
        elif isinstance(event, Done):
            done = event
    sys.stdout.write("\n")
    if args.out is not None:
        _write_wav(args.out, chunks)
    if done is not None and not args.quiet:
        s = done.stats
        print(f"[{done.reason}] {s.text_tokens} tokens, {s.audio_seconds:.2f} s of speech, "
              f"{s.total_time:.2f} s total", file=sys.stderr)
        if backend.info.is_tiny:
            print("note: the tiny model has random weights; its replies are noise.", file=sys.stderr)
    return 0


def _say(args) -> int:
    from .api import Request
    from .events import AudioChunk, Done
    from .media import load_audio

    reference = load_audio(args.voice_ref) if args.voice_ref is not None else None
    backend = open_backend(args, announce=False)
    voice = args.voice
    if reference is not None:
        voice = backend.create_voice("reference", reference, base=args.voice)
    limits = GenerationLimits(max_speech_seconds=args.max_speech_seconds)
    request = Request(voice=voice, limits=limits, seed=args.seed, speak_text=args.text)
    chunks, done = [], None
    for event in backend.stream(request):
        if isinstance(event, AudioChunk):
            chunks.append(event)
        elif isinstance(event, Done):
            done = event
    _write_wav(args.out, chunks)
    if done is not None:
        print(f"wrote {args.out}: {done.stats.audio_seconds:.2f} s of speech in {done.stats.total_time:.2f} s",
              file=sys.stderr)
    return 0


def _write_wav(path: Path, chunks) -> None:
    import numpy as np
    import soundfile as sf

    from .errors import RequestError

    if not chunks:
        raise RequestError("The reply has no speech to write.")
    samples = np.concatenate([c.samples for c in chunks])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), samples, chunks[0].sample_rate, subtype="PCM_16")
    except (OSError, RuntimeError) as exc:
        raise RequestError(f"Could not write {path}: {exc}") from exc


def quiet_libraries() -> None:
    """Library warnings and progress bars are noise on a command line."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # The hub logs every retry of an unreachable server; the final error says it all.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
