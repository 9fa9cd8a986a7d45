"""``python -m omni_app space build OUT``: a complete Hugging Face Space folder from a Spacefile.

The folder holds exactly what the Space needs: ``README.md`` (the Space's settings in its
front matter), ``requirements.txt`` pinned for the chosen hardware, ``packages.txt``, the
``omni_app`` package (sources only), the example images when the image tab is shown, the
Spacefile itself and an ``app.py`` that reads it. No tests, benchmarks or caches.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import web_modules
from ..errors import RequestError
from .spacefile import Spacefile, load_spacefile

#: The repository the app's code and pins come from.
ROOT = Path(__file__).resolve().parents[2]

#: ZeroGPU runs these torch releases only (hub docs, spaces-zerogpu.md), each with its torchvision.
ZERO_GPU_TORCH = {"2.8.0": "0.23.0", "2.9.1": "0.24.1", "2.10.0": "0.25.0", "2.11.0": "0.26.0"}
#: The newest of them.
ZERO_GPU_TORCH_PIN = "2.11.0"
#: ZeroGPU runs Python 3.10.13 or 3.12.12; transformers 5.21 and later need Python 3.11 or newer.
ZERO_GPU_PYTHON = "3.12"
#: The Python the app is tested with, for every other hardware.
PYTHON = "3.11"
#: Files a Space built here always has (plus assets/ when the image tab is shown).
APP_FILE = "app.py"

APP_PY = '''"""omni_app on a Hugging Face Space. Its settings are in the Spacefile beside this file."""

import sys
from pathlib import Path

from omni_app.space.runtime import main

if __name__ == "__main__":
    sys.exit(main(Path(__file__).resolve().with_name("Spacefile")))
'''


@dataclass(frozen=True)
class BuiltSpace:
    """What ``build_space`` wrote."""

    folder: Path
    spacefile: Spacefile
    files: tuple[str, ...]
    requirements: tuple[str, ...]


def sdk_version() -> str:
    """The gradio the app is tested with: the installed one."""
    return _installed("gradio")


def tested_pins() -> dict[str, str]:
    """Each runtime requirement of the app (``requirements.txt``) with the version installed here."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name = re.match(r"[A-Za-z0-9._-]+", line).group(0)
        pins[name] = _installed(name)
    return pins


def requirements(spacefile: Spacefile) -> list[str]:
    """``requirements.txt`` lines for the Space: the tested versions, torch from ZeroGPU's list there."""
    pins = tested_pins()
    if spacefile.is_zero_gpu:
        pins["torch"] = ZERO_GPU_TORCH_PIN
        pins["torchvision"] = ZERO_GPU_TORCH[ZERO_GPU_TORCH_PIN]
    return [f"{name}=={pin}" for name, pin in pins.items()]


def front_matter(spacefile: Spacefile) -> dict:
    """The Space's settings, as the YAML front matter of its README.md."""
    meta: dict = {
        "title": spacefile.title,
        "emoji": spacefile.emoji,
        "colorFrom": "indigo",
        "colorTo": "purple",
        "sdk": "gradio",
        "sdk_version": sdk_version(),
        "python_version": ZERO_GPU_PYTHON if spacefile.is_zero_gpu else PYTHON,
        "app_file": APP_FILE,
        "short_description": spacefile.short_description,
        "pinned": False,
        "tags": ["qwen2.5-omni", "speech", "voice-chat", "multimodal", "streaming"],
    }
    if spacefile.model != "tiny":
        meta["models"] = [spacefile.checkpoint]
        # Downloaded while the Space is built, so start-up doesn't fetch the weights.
        meta["preload_from_hub"] = [spacefile.checkpoint]
    # Loading the weights (and, on ZeroGPU, packing them for its workers) takes minutes.
    meta["startup_duration_timeout"] = "30m" if spacefile.model == "tiny" else "1h"
    if spacefile.suggested_hardware:
        meta["suggested_hardware"] = spacefile.suggested_hardware
    return meta


def readme(spacefile: Spacefile) -> str:
    """The Space's README.md: front matter, then a few lines on what it runs."""
    import yaml

    head = yaml.safe_dump(front_matter(spacefile), sort_keys=False, allow_unicode=True)
    where = (f"ZeroGPU ({spacefile.zero_gpu.size}; up to {spacefile.zero_gpu.gpu_seconds} s of GPU time per reply)"
             if spacefile.is_zero_gpu else spacefile.hardware)
    model = ("the tiny random test model (its replies are noise)" if spacefile.model == "tiny"
             else f"[{spacefile.checkpoint}](https://huggingface.co/{spacefile.checkpoint})")
    return (f"---\n{head}---\n\n# {spacefile.title}\n\n{spacefile.short_description}\n\n"
            f"Talk to {model} on {where}: it answers in text and speech, and the speech starts while the "
            f"reply is still being generated. Tabs: {', '.join(spacefile.tabs)}. Videos up to "
            f"{spacefile.limits.video_seconds:g} s, replies up to {spacefile.limits.reply_tokens} tokens and "
            f"{spacefile.limits.speech_seconds:g} s of speech.\n\n"
            "This folder was made by `python -m omni_app space build` from the `Spacefile` in it; change the "
            "Spacefile and build again rather than editing the files.\n")


def build_space(out: str | Path, spacefile_path: str | Path = ROOT / "Spacefile") -> BuiltSpace:
    """Write the Space described by ``spacefile_path`` into ``out`` (new, empty, or an earlier build)."""
    spacefile = load_spacefile(spacefile_path)
    out = Path(out)
    _check_target(out)
    reqs = requirements(spacefile)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".space-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a Space folder is not
    try:
        (staging / "README.md").write_text(readme(spacefile), encoding="utf-8")
        (staging / APP_FILE).write_text(APP_PY, encoding="utf-8")
        shutil.copyfile(spacefile_path, staging / "Spacefile")
        (staging / "requirements.txt").write_text(
            f"# omni_app on {spacefile.hardware}: the versions it is tested with"
            + (f", torch from ZeroGPU's list ({', '.join(ZERO_GPU_TORCH)})" if spacefile.is_zero_gpu else "")
            + ".\n" + "\n".join(reqs) + "\n", encoding="utf-8")
        # Gradio converts uploaded and recorded media with ffmpeg; Spaces usually have it, this makes sure.
        (staging / "packages.txt").write_text("ffmpeg\n", encoding="utf-8")
        # The package: its Python modules and the page's speech player (ui/js).
        for source in sorted((ROOT / "omni_app").rglob("*")):
            if "__pycache__" in source.parts or source.suffix not in (".py", ".js"):
                continue
            target = staging / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        if {"voice", "video"} & set(spacefile.tabs):
            # The page's own voice detection (npm packages the app serves; no CDN at run time).
            modules = web_modules.check_installed()
            for name in web_modules.FILES:
                target = staging / "node_modules" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(modules / name, target)
        if "image" in spacefile.tabs and (ROOT / "assets").is_dir():
            shutil.copytree(ROOT / "assets", staging / "assets")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = tuple(sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()))
    return BuiltSpace(out, spacefile, files, tuple(reqs))


def is_built_space(folder: Path) -> bool:
    """Whether ``folder`` looks like a Space this module built."""
    return all((folder / name).exists() for name in ("README.md", APP_FILE, "Spacefile", "omni_app"))


def _check_target(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise RequestError(f"{out} is a file; give a folder for the Space.")
    if any(out.iterdir()) and not is_built_space(out):
        raise RequestError(f"{out} is not empty and is not a Space built before: choose a new or empty folder "
                           "(an earlier build is replaced).")


def _installed(name: str) -> str:
    try:
        found = version(name)
    except PackageNotFoundError:
        raise RequestError(f"{name} (in requirements.txt) is not installed here, so its tested version is "
                           "unknown: install the requirements first (scripts/setup.sh).") from None
    return found.split("+")[0]  # a local build label (2.14.1+cu130) is not on the package index
