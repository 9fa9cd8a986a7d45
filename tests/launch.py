"""Start a web app as a separate process, as a host would, and wait until it serves its page."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(argv: list[str], cwd: Path, log: Path, env: dict | None = None, timeout: float = 240):
    """Run ``argv`` in ``cwd`` with ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` set (as Spaces do).

    Yields the app's URL once its page answers; stops the process afterwards.
    """
    port = free_port()
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False",
                    GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), **(env or {}))
    url = f"http://127.0.0.1:{port}/"
    with log.open("w") as handle:
        # Its own process group: on ZeroGPU the app forks GPU workers, and they must go with it.
        process = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.time() + timeout
            while True:
                if process.poll() is not None:
                    pytest.fail(f"{' '.join(argv)} exited early:\n{log.read_text()[-3000:]}")
                if time.time() > deadline:
                    pytest.fail(f"{' '.join(argv)} did not start:\n{log.read_text()[-3000:]}")
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            yield url
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the app and what it forked; then SIGKILL whatever of the group is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
