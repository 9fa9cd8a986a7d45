#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run omni_app. Arguments go to `python -m omni_app`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m omni_app "$@"
