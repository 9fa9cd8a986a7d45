"""Drawing the "inside the model" pictures (matplotlib, off-screen) as RGB images."""

from __future__ import annotations

import io

import numpy as np

from .inside import AudioView, TokenMap, VisionView

COLORS = {"text": "#9aa5b1", "audio": "#e8833a", "image": "#3a86e8", "video": "#2bb673"}


def _figure(width: float = 9, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def _image(fig) -> np.ndarray:
    import matplotlib.pyplot as plt
    from PIL import Image

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def draw_token_map(tokens: TokenMap) -> np.ndarray:
    fig, ax = _figure(9, 2.4)
    for index, kind in enumerate(tokens.kinds):
        ax.axvspan(index, index + 1, color=COLORS[kind], lw=0)
    seen = {"audio": 0, "video": 0}
    for kind, start, length in tokens.runs:
        if kind not in seen:
            continue
        seen[kind] += 1  # with sound, a video's 2 s chunks alternate: frames first, then audio
        if length > len(tokens.kinds) / 40:
            ax.text(start + length / 2, 0.5, f"{kind} {seen[kind]}", ha="center", va="center", fontsize=7)
    ax.set_xlim(0, len(tokens.kinds))
    ax.set_yticks([])
    ax.set_xlabel("token index in the prompt")
    legend = [f"{k}: {n}" for k, n in tokens.counts.items() if n]
    handles = [__import__("matplotlib.patches", fromlist=["Patch"]).Patch(color=COLORS[k]) for k, n in
               tokens.counts.items() if n]
    ax.legend(handles, legend, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=4, frameon=False)
    ax.set_title("The prompt as the Thinker sees it")
    return _image(fig)


def draw_rope(positions: np.ndarray, per_second: int, kinds: list[str]) -> np.ndarray:
    fig, ax = _figure(9, 3.6)
    index = np.arange(positions.shape[1])
    for row, (label, style) in enumerate([("temporal", "-"), ("height", "--"), ("width", ":")]):
        ax.plot(index, positions[row], style, lw=1.2, label=label)
    for i, kind in enumerate(kinds):
        if kind != "text":
            ax.axvspan(i, i + 1, color=COLORS[kind], alpha=0.12, lw=0)
    ax.set_xlabel("token index")
    ax.set_ylabel("position id")
    seconds = ax.secondary_yaxis("right", functions=(lambda p: p / per_second, lambda s: s * per_second))
    seconds.set_ylabel(f"seconds ({per_second} ids per second)")
    ax.legend(loc="upper left")
    ax.set_title("TMRoPE: temporal / height / width position ids")
    return _image(fig)


def draw_audio(view: AudioView) -> np.ndarray:
    fig, ax = _figure(9, 3.2)
    ax.imshow(view.mel, origin="lower", aspect="auto", cmap="magma", extent=[0, view.seconds, 0, view.mel.shape[0]])
    for edge in np.arange(view.block_frames, view.mel.shape[1], view.block_frames) / 100:
        ax.axvline(edge, color="white", lw=1.2, ls="--")
    ax.set_xlabel("seconds (10 ms per frame; dashed: 2 s encoder blocks)")
    ax.set_ylabel("mel bin (128)")
    ax.set_title(f"Audio encoder input: {view.tokens} tokens for {view.seconds:.1f} s "
                 f"({view.tokens / max(view.seconds, 1e-6):.1f} tokens per second)")
    return _image(fig)


def draw_vision(view: VisionView) -> np.ndarray:
    h, w = view.image.shape[:2]
    fig, ax = _figure(7, 7 * h / max(w, 1) + 0.6)
    ax.imshow(view.image)
    for x in range(0, w + 1, view.patch):
        ax.axvline(x - 0.5, color="white", lw=0.3, alpha=0.6)
    for y in range(0, h + 1, view.patch):
        ax.axhline(y - 0.5, color="white", lw=0.3, alpha=0.6)
    for x in range(0, w + 1, view.merge):
        ax.axvline(x - 0.5, color="red", lw=0.9)
    for y in range(0, h + 1, view.merge):
        ax.axhline(y - 0.5, color="red", lw=0.9)
    ax.set_axis_off()
    extra = f", frames at {', '.join(f'{t:g}' for t in view.frame_times[:8])} s" if view.frame_times else ""
    ax.set_title(f"{w}x{h} px, {view.patch}px patches (white), 2x2 merged (red): "
                 f"{view.tokens_per_frame} tokens per {'frame' if view.kind == 'video' else 'image'}{extra}",
                 fontsize=9)
    return _image(fig)


def draw_dit(attention: dict, spans: list[tuple[int, int]], plans) -> np.ndarray:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    frames, block = attention["frames"], attention["block"]
    extent = [0, len(attention["field"]) * block, len(attention["field"]) * block, 0]
    left.imshow(attention["field"], cmap="Greys", interpolation="nearest", extent=extent)
    if len(attention["field"]) <= 60:
        for edge in range(0, frames, block):
            left.axhline(edge, color="#3a86e8", lw=0.3)
            left.axvline(edge, color="#3a86e8", lw=0.3)
    left.set_xlim(0, frames)
    left.set_ylim(frames, 0)
    left.set_xlabel("mel frame attended to")
    left.set_ylabel("mel frame being decoded")
    left.set_title(f"DiT attention reach: {attention['back_blocks']} blocks back, "
                   f"{attention['ahead_blocks']} ahead ({attention['block']} frames each)", fontsize=8)
    for row, plan in enumerate(plans):
        right.barh(row, (plan.window_end - plan.window_start) / 2, left=plan.window_start / 2, color="#d9dee4")
        right.barh(row, (plan.keep_end - plan.keep_start) / 2, left=plan.keep_start / 2, color="#2bb673")
    right.set_yticks(range(len(plans)))
    right.invert_yaxis()
    right.set_xlabel("codec code (grey: context decoded again, green: emitted)")
    right.set_ylabel("chunk")
    right.set_title(f"Streaming chunk schedule: {len(plans)} chunks", fontsize=9)
    return _image(fig)


def draw_timeline(data: dict, audio_seconds: float) -> np.ndarray:
    fig, ax = _figure(9, 3.6)
    for kind, color in (("token", COLORS["text"]), ("code", COLORS["audio"])):
        if data[kind]:
            t, n = zip(*data[kind], strict=True)
            ax.step(t, n, where="post", color=color, label=f"{kind}s")
    ax2 = ax.twinx()
    for start, end in data["playback"]:
        ax2.plot([start, end], [start - data["playback"][0][0], end - data["playback"][0][0]], color="#2bb673")
    for t, _ in data["chunk"]:
        ax.axvline(t, color="#2bb673", lw=0.6, ls=":")
    if data["first_audio"] is not None:
        ax.axvline(data["first_audio"], color="#2bb673", lw=1.5, label="first audio")
    ax.set_xlabel("seconds since the request")
    ax.set_ylabel("count")
    ax2.set_ylabel("audio played (s)")
    ahead = "stayed ahead of playback" if data["stall_seconds"] == 0 else f"stalled {data['stall_seconds']:.2f} s"
    ax.set_title(f"Latency timeline: {audio_seconds:.1f} s of speech, the stream {ahead}")
    ax.legend(loc="upper left")
    return _image(fig)
