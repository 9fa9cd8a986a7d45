#!/usr/bin/env bash
# Set up (scripts/setup.sh) and start the web app. Arguments go to app.py (try --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python app.py "$@"
