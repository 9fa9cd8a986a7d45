"""Shared fixtures: real media made at test time and one tiny model per session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from browser_kit import browser, page, questions  # noqa: F401, E402  (the browser tests' fixtures)

import omni_app  # noqa: F401  (first: it sets up the model thread's BLAS threads before torch loads)

SPEECH_TEXT = "What is in this picture? Please answer in one short sentence."


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> Path:
    """Build the tiny checkpoint into a fresh folder for this test session."""
    cache = tmp_path_factory.mktemp("omni-cache")
    os.environ["OMNI_APP_CACHE"] = str(cache)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return cache


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Speech (espeak-ng) in several formats, videos with and without sound, a photo-like image."""
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup.sh (it installs ffmpeg, espeak-ng and sox)")
    out = tmp_path_factory.mktemp("media")
    speech = out / "speech.wav"
    _run("espeak-ng", "-w", str(speech), SPEECH_TEXT)
    for ext, codec in [("flac", "flac"), ("mp3", "libmp3lame"), ("ogg", "libvorbis"),
                       ("webm", "libopus"), ("m4a", "aac")]:
        _run("ffmpeg", "-loglevel", "error", "-y", "-i", str(speech), "-c:a", codec, str(out / f"speech.{ext}"))
    _run("ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10",
         "-i", str(speech), "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
         "-shortest", str(out / "talking.mp4"))
    _run("ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=240x180:rate=15",
         "-t", "2.5", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out / "mute.mp4"))
    photo_like_image().save(out / "photo.jpg", quality=90)
    return out


def photo_like_image(width: int = 480, height: int = 320):
    """A deterministic outdoor-like scene: sky gradient, sun, hills, textured grass."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    y = np.linspace(0, 1, height)[:, None]
    sky = np.stack([90 + 100 * y, 150 + 80 * y, 235 - 30 * y], axis=-1) * np.ones((1, width, 1))
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse([width * 0.7, height * 0.1, width * 0.85, height * 0.1 + width * 0.15], fill=(255, 230, 120))
    draw.polygon([(0, height * 0.6), (width * 0.3, height * 0.4), (width * 0.6, height * 0.62),
                  (width, height * 0.45), (width, height), (0, height)], fill=(60, 140, 70))
    pixels = np.asarray(image).astype(np.int16)
    noise = rng.integers(-18, 18, size=pixels.shape)
    ground = (np.arange(height) > height * 0.5)[:, None, None]
    pixels = np.clip(pixels + noise * ground, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.SMOOTH)


@pytest.fixture(scope="session")
def service():
    """One tiny model service for the whole session, with the default (streaming) engine."""
    from omni_app.config import ServiceConfig
    from omni_app.engine.service import ModelService

    return ModelService.from_config(ServiceConfig(model="tiny"))


@pytest.fixture(scope="session")
def reference_service(service):
    """The same loaded model behind the reference engine (transformers' generate())."""
    from omni_app.engine.reference import ReferenceEngine
    from omni_app.engine.service import ModelService

    return ModelService(service.loaded, ReferenceEngine())


@pytest.fixture(params=["streaming", "reference"])
def any_service(request, service, reference_service):
    """Each engine in turn: both must keep the service's promises."""
    return service if request.param == "streaming" else reference_service


#: The key the served model requires in the tests (a missing or wrong one gets 401).
SERVER_KEY = "test-key"
#: Replies the served model makes at once in the tests.
SERVER_BATCH = 2


class LiveProcess:
    """A command started on a free port, its log kept for the tests to read."""

    def __init__(self, url: str, log: Path, process) -> None:
        self.url = url
        self.log = log
        self.process = process


class LiveApp(LiveProcess):
    """``python app.py`` on a free port, its log kept for the tests to read."""

    def turn_end_times(self) -> list[float]:
        """Epoch seconds of each end of a spoken turn, as the app logged them."""
        import re

        return [float(m) for m in re.findall(r"turn received at ([0-9.]+)", self.log.read_text())]


def _free_port() -> int:
    from launch import free_port

    return free_port()


def launch(args: list[str], url: str, log: Path, probe: str = "", kind: type[LiveProcess] = LiveProcess):
    """Start ``args`` (a Python command) in the repository and wait until ``url + probe`` answers."""
    import sys
    import time
    import urllib.request

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
    handle = log.open("w")
    process = subprocess.Popen([sys.executable, *args], cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{' '.join(args[:3])} exited early:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + probe, timeout=2)
            return kind(url, log, process)
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"{' '.join(args[:3])} did not start:\n{log.read_text()[-3000:]}")


def stop(live: LiveProcess, name: str) -> None:
    live.process.terminate()
    try:
        live.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        live.process.kill()
    out = Path(__file__).resolve().parents[1] / "test-output"
    out.mkdir(exist_ok=True)
    shutil.copyfile(live.log, out / name)


@pytest.fixture(scope="session")
def live_app(tmp_path_factory, _isolated_cache):
    """The web app with the tiny model, launched as a user would, for client and browser tests."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    # A voices folder with a malformed file: the app must start anyway and say why it skipped it.
    voices = tmp_path_factory.mktemp("voices")
    (voices / "broken.voice.safetensors").write_bytes(b"not a voice file")
    live = launch(["app.py", "--model", "tiny", "--port", str(port), "--max-new-tokens", "24", "--max-speech-seconds",
                   "2", "--voices-dir", str(voices)], f"http://127.0.0.1:{port}/", log, kind=LiveApp)
    yield live
    stop(live, "app.log")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, _isolated_cache):
    """``python -m omni_app serve`` with the tiny model and an API key, as a user starts it (two replies at once)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    live = launch(["-m", "omni_app", "serve", "--model", "tiny", "--port", str(port), "--api-key", SERVER_KEY,
                   "--max-batch", str(SERVER_BATCH)],
                  f"http://127.0.0.1:{port}", log, "/health")
    yield live
    stop(live, "server.log")


@pytest.fixture(scope="session")
def remote_app(tmp_path_factory, live_server):
    """The web app in front of the served model (``app.py --backend URL``)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("remote-app") / "app.log"
    live = launch(["app.py", "--backend", f"{live_server.url}/v1", "--api-key", SERVER_KEY, "--port", str(port),
                   "--max-new-tokens", "24", "--max-speech-seconds", "2"], f"http://127.0.0.1:{port}/", log)
    yield live
    stop(live, "remote-app.log")
