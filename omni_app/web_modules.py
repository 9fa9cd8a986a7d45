"""The npm packages the page runs itself (silero VAD in the browser), served by the app.

``scripts/setup.sh`` installs them from ``package-lock.json`` into ``node_modules/`` beside the
``omni_app`` package; ``space build`` copies the files listed here into a built Space. The
app serves them from its own address: no CDN is reached at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OmniError

#: Where the packages are (the folder that holds ``node_modules``'s packages).
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "node_modules"

VAD_DIR = "@ricky0123/vad-web/dist"
ORT_DIR = "onnxruntime-web/dist"

#: Every file the page loads, relative to ``node_modules``.
FILES = (
    f"{ORT_DIR}/ort.wasm.min.js",  # onnxruntime-web, the WebAssembly build only (global ``ort``)
    f"{ORT_DIR}/ort-wasm-simd-threaded.mjs",  # its loader and runtime, fetched by ort
    f"{ORT_DIR}/ort-wasm-simd-threaded.wasm",
    f"{VAD_DIR}/bundle.min.js",  # @ricky0123/vad-web (global ``vad``)
    f"{VAD_DIR}/vad.worklet.bundle.min.js",  # its AudioWorklet (frames at 16 kHz)
    f"{VAD_DIR}/silero_vad_v5.onnx",  # 32 ms frames: a start is known within one frame
)


def modules_dir() -> Path:
    """The ``node_modules`` folder the app serves (``OMNI_APP_WEB_MODULES`` overrides it)."""
    return Path(os.environ.get("OMNI_APP_WEB_MODULES") or DEFAULT_DIR).resolve()


def check_installed(folder: Path | None = None) -> Path:
    """The folder, after checking every file is there (a clear message if not)."""
    folder = folder or modules_dir()
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise OmniError(f"the page's voice detection files are missing ({len(missing)} of {len(FILES)}, e.g. "
                        f"{missing[0]}): run scripts/setup.sh, or `npm ci` in the folder that holds "
                        "package.json")
    return folder


def urls(folder: Path) -> dict[str, str]:
    """Where the page fetches the packages, through gradio's file route (the folder must be
    allowed with ``gr.set_static_paths``)."""
    base = f"/gradio_api/file={folder.as_posix()}"
    return {"ort": f"{base}/{ORT_DIR}/ort.wasm.min.js", "vad": f"{base}/{VAD_DIR}/bundle.min.js",
            "vadAssets": f"{base}/{VAD_DIR}/", "ortAssets": f"{base}/{ORT_DIR}/"}
