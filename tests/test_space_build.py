"""``space build`` for each kind of hardware, ``space push`` without a network, and a built Space running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from omni_app import web_modules
from omni_app.errors import OmniError, RequestError
from omni_app.space.build import ZERO_GPU_TORCH, build_space
from omni_app.space.push import push_space

ROOT = Path(__file__).resolve().parents[1]

SPACEFILE = """\
title: omni_app test
emoji: 🎙️
short_description: The app on {hardware}
hardware: {hardware}
model: {model}
tabs: {tabs}
limits:
  video_seconds: 10
  reply_tokens: 16
  speech_seconds: 1.5
"""

#: One Space per kind of hardware: ZeroGPU, the CPU, a small and a large dedicated GPU.
KINDS = {
    "zero-gpu": ("zero-gpu", "7B", "[voice, video, image, tts, inside]"),
    "cpu": ("cpu", "tiny", "[voice, image]"),
    "small-gpu": ("l4x1", "3B", "[voice, tts]"),
    "large-gpu": ("a100-large", "7B", "[video, inside]"),
}
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
FLAVORS = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l40sx1", "a10g-small", "a10g-large",
           "a100-large", "rtx-pro-6000"}


def build(tmp_path: Path, kind: str) -> Path:
    hardware, model, tabs = KINDS[kind]
    spacefile = tmp_path / f"{kind}.Spacefile"
    spacefile.write_text(SPACEFILE.format(hardware=hardware, model=model, tabs=tabs), encoding="utf-8")
    return build_space(tmp_path / kind, spacefile).folder


def front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def pins(folder: Path) -> dict[str, str]:
    lines = [x for x in (folder / "requirements.txt").read_text().splitlines() if x and not x.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][0-9.]*", x) for x in lines), lines
    return dict(x.split("==") for x in lines)


@pytest.mark.parametrize("kind", list(KINDS))
def test_front_matter_has_every_field_with_a_valid_value(tmp_path, kind):
    folder = build(tmp_path, kind)
    hardware, model, _ = KINDS[kind]
    meta = front_matter(folder)
    assert meta["title"] == "omni_app test" and meta["emoji"] == "🎙️"
    assert meta["colorFrom"] in COLORS and meta["colorTo"] in COLORS
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == version("gradio")
    assert (folder / meta["app_file"]).is_file()
    assert 0 < len(meta["short_description"]) <= 60
    assert re.fullmatch(r"\d+[mh]", meta["startup_duration_timeout"])
    if hardware == "zero-gpu":
        # ZeroGPU runs Python 3.10.13 or 3.12.12, and transformers 5.21+ needs 3.11+.
        assert meta["python_version"] == "3.12" and "suggested_hardware" not in meta
    else:
        assert meta["python_version"] == "3.11" and meta["suggested_hardware"] in FLAVORS
    checkpoint = {"7B": "Qwen/Qwen2.5-Omni-7B", "3B": "Qwen/Qwen2.5-Omni-3B"}.get(model)
    if checkpoint:
        assert meta["models"] == [checkpoint] and meta["preload_from_hub"] == [checkpoint]
    else:
        assert "models" not in meta and "preload_from_hub" not in meta


@pytest.mark.parametrize("kind", list(KINDS))
def test_requirements_are_pinned_for_the_hardware(tmp_path, kind):
    folder = build(tmp_path, kind)
    pinned = pins(folder)
    assert pinned["gradio"] == version("gradio") and pinned["transformers"] == version("transformers")
    assert {"spaces", "pyyaml", "silero-vad", "torchvision"} <= set(pinned)
    if KINDS[kind][0] == "zero-gpu":
        assert pinned["torch"] in ZERO_GPU_TORCH and pinned["torchvision"] == ZERO_GPU_TORCH[pinned["torch"]]
    else:
        assert pinned["torch"] == version("torch").split("+")[0]
    assert (folder / "packages.txt").read_text().split() == ["ffmpeg"]


@pytest.mark.parametrize("kind", ["zero-gpu", "cpu"])
def test_the_folder_holds_the_app_and_nothing_else(tmp_path, kind):
    folder = build(tmp_path, kind)
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    top = {"README.md", "app.py", "Spacefile", "requirements.txt", "packages.txt"}
    for name in files:
        code = name.startswith("omni_app/") and name.endswith((".py", ".js"))
        page = name.removeprefix("node_modules/") in web_modules.FILES  # what the page runs itself
        assert name in top or code or page or name.startswith("assets/"), name
        assert not re.search(r"(^|/)(tests?|bench|scripts|__pycache__|\.cache)(/|$)|test_|conftest|\.pyc$", name), name
    assert top <= set(files) and "omni_app/space/runtime.py" in files
    assert "omni_app/ui/js/player.js" in files  # the page's speech player goes with the app
    assert (folder / "Spacefile").read_text() == (tmp_path / f"{kind}.Spacefile").read_text()
    # The example images go with the image tab only.
    tabs = yaml.safe_load((folder / "Spacefile").read_text())["tabs"]
    assert any(f.startswith("assets/") for f in files) == ("image" in tabs)
    # The page's voice detection goes with the chat tabs, all of it (no CDN at run time).
    listens = bool({"voice", "video"} & set(tabs))
    assert {f for f in files if f.startswith("node_modules/")} == (
        {f"node_modules/{name}" for name in web_modules.FILES} if listens else set())


def test_a_build_replaces_an_earlier_one_but_no_other_folder(tmp_path):
    folder = build(tmp_path, "cpu")
    (folder / "omni_app" / "stale.py").write_text("")
    assert not (build(tmp_path, "cpu") / "omni_app" / "stale.py").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(RequestError, match="not empty"):
        build_space(other, tmp_path / "cpu.Spacefile")
    assert (other / "notes.txt").read_text() == "keep me"


def test_build_warns_when_the_longest_reply_may_outrun_its_gpu_time(tmp_path):
    spacefile = tmp_path / "Spacefile"
    spacefile.write_text(SPACEFILE.format(hardware="zero-gpu", model="3B", tabs="[voice]").replace(
        "reply_tokens: 16", "reply_tokens: 2000").replace("speech_seconds: 1.5", "speech_seconds: 200")
        + "zero_gpu:\n  gpu_seconds: 60\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "omni_app", "space", "build", str(tmp_path / "space"),
                          "--spacefile", str(spacefile)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch==2.11.0" in out.stdout and "zero_gpu.gpu_seconds (60)" in out.stderr
    quiet = subprocess.run([sys.executable, "-m", "omni_app", "space", "build", str(tmp_path / "space")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "warning" not in quiet.stderr  # the repository's own Spacefile


class RecordingHub:
    """Stands in for huggingface_hub.HfApi: records what would be sent."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail = fail

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def upload_folder(self, *args, **kwargs):
        if self.fail:
            raise self.fail
        self.calls.append(("upload_folder", args, kwargs))


def test_push_uploads_the_folder_to_the_space(tmp_path):
    folder = build(tmp_path, "cpu")
    hub = RecordingHub()
    assert push_space(folder, "someone/omni-demo", api=hub) == "https://huggingface.co/spaces/someone/omni-demo"
    (create, c_args, c_kwargs), (upload, _, u_kwargs) = hub.calls
    assert create == "create_repo" and c_args == ("someone/omni-demo",)
    assert c_kwargs["repo_type"] == "space" and c_kwargs["space_sdk"] == "gradio" and c_kwargs["exist_ok"]
    assert upload == "upload_folder" and Path(u_kwargs["folder_path"]) == folder
    assert u_kwargs["repo_id"] == "someone/omni-demo" and u_kwargs["repo_type"] == "space"
    assert u_kwargs["delete_patterns"] == ["*"]  # the Space then holds exactly the build


def test_push_refusals_are_clear(tmp_path):
    folder = build(tmp_path, "cpu")
    with pytest.raises(RequestError, match="must look like user/name"):
        push_space(folder, "no-owner", api=RecordingHub())
    with pytest.raises(RequestError, match="is not a built Space"):
        push_space(tmp_path, "someone/x", api=RecordingHub())
    with pytest.raises(RequestError, match="upload to someone/x failed: huggingface.co could not be reached"):
        push_space(folder, "someone/x", api=RecordingHub(fail=ConnectionError("unreachable")))


def test_push_without_a_token_says_how_to_get_one(tmp_path):
    folder = build(tmp_path, "cpu")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "omni_app", "space", "push", str(folder), "--repo", "someone/x"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "No Hugging Face token found" in out.stderr and "HF_TOKEN" in out.stderr


def test_the_built_cpu_space_answers_a_typed_question(tmp_path):
    from gradio_client import Client
    from launch import serving

    folder = build(tmp_path, "cpu")
    # As Spaces start it: `python app.py` in the Space's folder, server address from the environment.
    with serving([sys.executable, "app.py"], cwd=folder, log=tmp_path / "space.log") as url:
        client = Client(url, verbose=False, download_files=False)
        assert "/voice_chat_text" in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        job = client.submit("Hello there", "Chelsie", True, api_name="/voice_chat_text")
        updates = list(job)
    messages = job.outputs()[-1][0]
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"][0]["text"].strip()
    # Speech reached the page's player chunk by chunk, and its WAV came after it.
    assert any(isinstance(u[1], str) and '"seq"' in u[1] for u in updates)
    assert job.outputs()[-1][3]["url"]
    log = (tmp_path / "space.log").read_text()
    assert "loading tiny on cpu" in log and "Traceback" not in log


def test_missing_page_packages_are_named_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_APP_WEB_MODULES", str(tmp_path))
    with pytest.raises(OmniError, match=r"voice detection files are missing \(6 of 6.*run scripts/setup.sh"):
        web_modules.check_installed()
    with pytest.raises(OmniError, match="run scripts/setup.sh"):
        build_space(tmp_path / "space")  # the default Spacefile has the chat tabs
