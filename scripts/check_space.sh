#!/usr/bin/env bash
# Once, by hand (not in CI): does the ZeroGPU Space's requirements.txt install into a fresh
# Python 3.12 environment, as a ZeroGPU Space installs it, and does its app start there?
#
#   scripts/check_space.sh [WORKDIR]   (Python 3.12: $PYTHON312, else pyenv's newest 3.12, else python3.12)
#
# Builds the Space of ./Spacefile with the tiny model in place of its model and short replies
# (the requirements depend on neither), installs them (several GB: torch and its CUDA libraries), then
# 1. loads the model under the spaces package's real CUDA emulation, as a ZeroGPU Space does
#    at start, and checks that it was placed on cuda;
# 2. starts the Space's app.py under tests/zerogpu_emulator.py and asks it a question.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"
work="$(realpath -m "${1:-$(mktemp -d -t omni-space-check-XXXXXX)}")"
python="${PYTHON312:-}"
if [[ -z "$python" ]] && command -v pyenv > /dev/null; then
  version="$(pyenv versions --bare | grep -E '^3\.12(\.|$)' | tail -1 || true)"
  [[ -n "$version" ]] && python="$(pyenv root)/versions/$version/bin/python3.12"
fi
python="${python:-$(command -v python3.12 || true)}"
if [[ -z "$python" ]] || ! "$python" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  echo "check_space: no Python 3.12 found; set PYTHON312=/path/to/python3.12" >&2
  exit 1
fi
mkdir -p "$work"
echo "check_space: working in $work with $("$python" --version)"

# The repository's Spacefile with the tiny model and short replies (the tiny model's random
# replies run to their limits); its requirements must equal the real build's.
sed -E -e 's/^model: .*/model: tiny/' -e 's/^( *reply_tokens:) *[0-9]+/\1 24/' \
  -e 's/^( *speech_seconds:) *[0-9.]+/\1 2/' Spacefile > "$work/Spacefile"
.venv/bin/python -m omni_app space build "$work/space" --spacefile "$work/Spacefile"
.venv/bin/python -m omni_app space build "$work/real-space" > /dev/null
diff -u "$work/real-space/requirements.txt" "$work/space/requirements.txt"
sdk="$(sed -nE 's/^sdk_version: *//p' "$work/space/README.md")"

# As a Space installs: its requirements.txt, then the gradio of sdk_version and spaces.
"$python" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet -r "$work/space/requirements.txt"
"$py" -m pip install --quiet "gradio[oauth]==$sdk" spaces
"$py" -m pip check
"$py" -c 'import sys; from importlib.metadata import version as v
print("check_space: installed Python", sys.version.split()[0], *(f"{n} {v(n)}" for n in
      ("torch", "torchvision", "transformers", "gradio", "spaces", "numpy", "av")))'

export OMNI_APP_CACHE="$work/cache" HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False

echo "check_space: 1. the model placed on cuda under ZeroGPU's CUDA emulation"
(cd "$work/space" && SPACES_ZERO_GPU=true SPACES_ZERO_DEVICE_API_URL=http://127.0.0.1:9 "$py" - <<'EOF'
from omni_app import zerogpu
zerogpu.prepare()
from omni_app.config import ServiceConfig
from omni_app.engine.local import LocalBackend
from spaces.zero import torch as layer
backend = LocalBackend.from_config(ServiceConfig(model="tiny"))
weight = next(backend.service.loaded.model.parameters())
assert weight.device.type == "cuda", weight.device
assert layer.size() > 0
print(f"check_space: placed on {weight.device} ({weight.dtype}), {layer.size()} bytes for ZeroGPU to move")
EOF
)

echo "check_space: 2. the Space's app.py on an emulated ZeroGPU, asked a question"
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# In a session of its own, so that the GPU worker it forks is stopped with it.
(cd "$work/space" && GRADIO_SERVER_NAME=127.0.0.1 GRADIO_SERVER_PORT="$port" \
  exec setsid "$py" "$repo/tests/zerogpu_emulator.py" app.py) > "$work/app.log" 2>&1 &
app=$!
trap 'kill -- -"$app" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  if curl -sf -o /dev/null "http://127.0.0.1:$port/"; then break; fi
  if ! kill -0 "$app" 2>/dev/null; then tail -40 "$work/app.log"; echo "check_space: FAILED: the app exited" >&2; exit 1; fi
  sleep 1
done
"$py" - "$port" <<'EOF'
import sys
from gradio_client import Client
client = Client(f"http://127.0.0.1:{sys.argv[1]}/", verbose=False, download_files=False)
job = client.submit("Hello there", "Chelsie", True, api_name="/voice_chat_text")
updates = list(job)
final = job.outputs()[-1]
text = final[0][-1]["content"][0]["text"]
# Speech goes to the page's player chunk by chunk; when the reply ends, its WAV to replay.
chunks = [u[1] for u in updates if isinstance(u[1], str) and '"seq"' in u[1]]
assert text.strip() and chunks and final[3]["url"], (text, len(chunks), final[3])
print(f"check_space: answered {len(text)} characters of text and {len(chunks)} speech chunks, then its WAV; "
      f"status: {final[2]}")
EOF
echo "check_space: PASSED (log: $work/app.log)"
