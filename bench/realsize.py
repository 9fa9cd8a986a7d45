"""A randomly initialised Qwen2.5-Omni at the real 3B or 7B size, for speed measurements.

No download: the sizes are those of the public configs; the tokenizer, processor and
voices come from the tiny checkpoint (the token ids are set to match it). Replies are
random, but every matrix has its real shape, so timings are those of the real model.
Meant for a GPU; on a CPU only with ``layers`` set, as a smoke check.

    python bench/realsize.py --size 7B --users 1,4,8 [--compile]   # K people at once

prints, per K, the time to first audio, each reply's real-time factor (generation time /
seconds of speech: below 1 keeps ahead of the listener) and the speech made per second.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni_app.engine.loader import LoadedModel, load_model, pick_attention, pick_device, pick_dtype  # noqa: E402

SIZES = {
    "7B": dict(
        text=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                  intermediate_size=18944, vocab_size=152064, mrope=[16, 24, 24]),
        encoder_out=3584,
        talker=dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=12, num_key_value_heads=4,
                    head_dim=128, intermediate_size=18944, mrope=[16, 24, 24]),
    ),
    # 3B: the Talker's layer count and MLP width are not confirmed by a public copy of the
    # config; the 7B values are used for them.
    "3B": dict(
        text=dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                  head_dim=128, intermediate_size=11008, vocab_size=151936, mrope=[16, 24, 24]),
        encoder_out=2048,
        talker=dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                    head_dim=64, intermediate_size=18944, mrope=[8, 12, 12]),
    ),
}


def random_real_size_model(size: str, device: str = "auto", layers: int | None = None) -> LoadedModel:
    """Build the model in memory on ``device`` with random weights."""
    import json

    import torch
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    tiny = load_model("tiny", device="cpu")
    tiny_config = json.loads(tiny.model.config.to_json_string())
    spec = SIZES[size]
    dev = pick_device(device)
    dtype = pick_dtype(dev)
    attention = pick_attention(dev)

    text = dict(spec["text"])
    mrope = text.pop("mrope")
    thinker = tiny_config["thinker_config"]
    thinker["text_config"].update(text, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                         "mrope_section": mrope})
    thinker["audio_config"].update(d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                                   encoder_ffn_dim=5120, output_dim=spec["encoder_out"])
    thinker["vision_config"].update(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420,
                                    out_hidden_size=spec["encoder_out"], fullatt_block_indexes=[7, 15, 23, 31])
    talker_spec = dict(spec["talker"])
    talker_mrope = talker_spec.pop("mrope")
    talker = tiny_config["talker_config"]
    talker.update(talker_spec, embedding_size=spec["encoder_out"],
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": talker_mrope})
    token2wav = tiny_config["token2wav_config"]
    # Real DiT and BigVGAN sizes (the library defaults), but every talker code decodable:
    # a random Talker samples codes a trained one never emits.
    token2wav["dit_config"] = {"num_embeds": 8448, "dropout": 0.0}
    token2wav["bigvgan_config"] = {}
    if layers:
        thinker["text_config"]["num_hidden_layers"] = layers
        thinker["audio_config"]["encoder_layers"] = layers
        thinker["vision_config"].update(depth=layers, fullatt_block_indexes=[layers - 1])
        talker["num_hidden_layers"] = layers
    for section in (thinker["text_config"], talker):
        section.pop("layer_types", None)
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, token2wav_config=token2wav)

    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            model = Qwen2_5OmniForConditionalGeneration._from_config(config, attn_implementation=attention,
                                                                     dtype=dtype)
    finally:
        torch.set_default_dtype(previous)
    model.token2wav.float()
    model.eval()
    # Random logits would mostly pick ids the small tokenizer can't show, so no text would
    # appear; zeroing those rows of the output layer keeps the cost and makes text visible.
    with torch.no_grad():
        model.thinker.lm_head.weight[len(tiny.processor.tokenizer):] = 0
    model.speaker_map = dict(tiny.voices)
    return LoadedModel(name=f"random-{size}" + (f"-{layers}-layers" if layers else ""), path="", model=model,
                       processor=tiny.processor, voices=dict(tiny.voices), device=dev, dtype=dtype,
                       attention=attention, is_tiny=False, load_seconds=time.perf_counter() - started)


def main() -> int:
    """K people at once on the random real-size model: first audio and real-time factor per K."""
    import argparse
    import statistics
    import threading

    from omni_app.api import Request
    from omni_app.config import GenerationLimits, ServiceConfig
    from omni_app.conversation import Conversation
    from omni_app.engine.memory import fit_batch
    from omni_app.engine.service import ModelService
    from omni_app.engine.streaming import StreamingEngine
    from omni_app.events import AudioChunk

    parser = argparse.ArgumentParser(description="K people at once on a random Qwen2.5-Omni of the real size.")
    parser.add_argument("--size", choices=sorted(SIZES), default="7B")
    parser.add_argument("--users", default="1,4,8", help="numbers of people at once (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the speech decoder's steps")
    parser.add_argument("--layers", type=int, help="fewer layers, for a quick smoke check (e.g. on a CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--speech-seconds", type=float, default=6.0)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    args = parser.parse_args()
    counts = sorted({int(k) for k in args.users.split(",")})

    loaded = random_real_size_model(args.size, args.device, args.layers)
    batch = fit_batch(loaded, max(counts))
    engine = StreamingEngine(ServiceConfig.chunk_blocks, compile=args.compile)
    service = ModelService(loaded, engine, session_cache_mb=0, max_batch=batch)
    limits = GenerationLimits(max_new_tokens=args.max_new_tokens, max_speech_seconds=args.speech_seconds)
    print(f"model: {loaded.name} on {loaded.device} ({loaded.dtype}), built in {loaded.load_seconds:.1f} s; "
          f"batch up to {batch}; compile: {args.compile}", flush=True)

    def one(index: int, out: list) -> None:
        request = Request(Conversation().add_user(f"Tell me about the sea, part {index}."), limits=limits, seed=index)
        started, first, audio = time.perf_counter(), None, 0.0
        for event in service.stream(request):
            if isinstance(event, AudioChunk):
                first = first if first is not None else time.perf_counter() - started
                audio += event.seconds
        out.append((first, time.perf_counter() - started, audio))

    started = time.perf_counter()
    one(0, [])  # warm-up (and, with --compile, the compilation)
    print(f"warm-up {time.perf_counter() - started:.1f} s", flush=True)
    print(f"{'users':>5} {'first_audio_p50':>15} {'first_audio_max':>15} {'rtf_p50':>8} {'rtf_max':>8} "
          f"{'x_real_time':>11}", flush=True)
    for users in counts:
        out: list = []
        threads = [threading.Thread(target=one, args=(i, out)) for i in range(users)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        firsts = [f for f, _, _ in out if f is not None]
        rtfs = [total / audio for _, total, audio in out if audio]
        speech = sum(audio for _, _, audio in out)
        print(f"{users:5d} {statistics.median(firsts):15.3f} {max(firsts):15.3f} {statistics.median(rtfs):8.3f} "
              f"{max(rtfs):8.3f} {speech / wall:11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
