#!/usr/bin/env bash
# Set up everything omni_app needs on a fresh machine (idempotent, fast when done):
#   - system packages: ffmpeg (media decoding), espeak-ng and sox (test speech), chromium
#     (browser tests), nodejs and npm (the page's voice activity detection, tests of the
#     page's speech player logic)
#   - a Python 3.11 virtual environment in .venv with requirements-dev.txt
#   - node_modules/ from package-lock.json: silero VAD for the page (@ricky0123/vad-web,
#     onnxruntime-web), which the app serves itself
# Usage: scripts/setup.sh            (sourced by scripts/run.sh and scripts/test.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# command:package (the package is named like the command unless given)
SYSTEM_PACKAGES=(ffmpeg espeak-ng sox chromium node:nodejs npm)
missing=()
for entry in "${SYSTEM_PACKAGES[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry##*:}")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else
    echo "setup: please install ${missing[*]} (as root: apt-get install ${missing[*]})" >&2; exit 1
  fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt requirements-ray.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: installing Python packages (the first time takes several minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# The page's own packages, exactly as locked (no install scripts run).
web_stamp=node_modules/.package-lock.sha256
web_want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f $web_stamp || $(cat "$web_stamp") != "$web_want" ]]; then
  echo "setup: installing the page's packages (npm ci)"
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  echo "$web_want" > "$web_stamp"
fi
