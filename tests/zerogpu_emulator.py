"""ZeroGPU as close as a machine without a GPU allows, for tests.

On a ZeroGPU Space the ``spaces`` package (``SPACES_ZERO_GPU=true``) runs each ``spaces.GPU``
call in a forked worker process, after asking ZeroGPU's device API (at
``SPACES_ZERO_DEVICE_API_URL``) to ``/schedule`` a GPU for the requested seconds, to
``/allow`` the worker on it and to ``/release`` it afterwards; the app reports its start to
``/startup-report``. :class:`DeviceApi` answers those calls on loopback the way the real
API does when a GPU is free, records what it was asked, and, as the real one does, can refuse
with "quota exceeded" (HTTP 429 and the quota left) or keep requests in its queue while
every GPU is busy.

What can't be emulated: a GPU. The ``spaces`` package's CUDA layer (torch patching, packing
the weights, moving them onto the lent GPU in the worker) needs CUDA, so :func:`emulate`
puts in its place the no-op layer ``spaces`` itself uses when torch is absent, and the model
stays on the CPU. Everything else is the real package: the wrappers, the fork, the pickling
of arguments and yields, the stop event, the HTTP client and its error messages.

``python tests/zerogpu_emulator.py SCRIPT [ARGS...]`` runs SCRIPT (an app, a check) under it.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import threading
import time
import types
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

#: Quota left and wait reported when refusing: what ZeroGPU says to a visitor who used it up.
QUOTA_LEFT_SECONDS = 5
QUOTA_WAIT_SECONDS = 754


class DeviceApi:
    """ZeroGPU's device API on a free loopback port; ``calls`` lists what it was asked."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        #: ``"ok"`` lends a GPU; ``"quota"`` answers that the visitor's quota is spent; ``"hold"``
        #: keeps requests queued (every GPU busy) until the mode changes.
        self.mode = "ok"
        self._busy: dict[str, int] = {}  # allow token -> GPU index
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/emulator/mode":
                    api.mode = params["value"]
                    return self._send(200, {"mode": api.mode})
                api.calls.append({"path": url.path, **params})
                if url.path == "/schedule" and api.mode == "hold":
                    return self._queue(params)
                if url.path == "/schedule":
                    return self._send(*api.schedule(params))
                if url.path == "/release":
                    with api._lock:
                        api._busy.pop(params.get("allowToken", ""), None)
                return self._send(200, {})

            def do_GET(self):  # noqa: N802
                self._send(200, api.calls)

            def _queue(self, params):
                # Every GPU busy: ZeroGPU keeps the request in its queue with pings (server-sent
                # events) until a GPU is free, then answers "succeeded" with the lease.
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                self.close_connection = True
                try:
                    while api.mode == "hold":
                        self.wfile.write(b"event: ping\n\n")
                        self.wfile.flush()
                        time.sleep(0.3)
                    _, lease = api.schedule(params)
                    self.wfile.write(f"event: succeeded\ndata: {json.dumps(lease)}\n\n".encode())
                    self.wfile.flush()
                except OSError:
                    pass  # the visitor left while queued

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="zerogpu-device-api").start()

    def schedule(self, params: dict) -> tuple[int, dict]:
        if self.mode == "quota":
            return 429, {"left": QUOTA_LEFT_SECONDS, "wait": QUOTA_WAIT_SECONDS}
        with self._lock:
            index = min(set(range(len(self._busy) + 1)) - set(self._busy.values()))
            token = uuid.uuid4().hex
            self._busy[token] = index
        return 200, {"idle": True, "nvidiaIndex": index, "nvidiaUUID": f"GPU-emulated-{index}", "allowToken": token}

    def durations(self) -> list[int]:
        """The GPU seconds each schedule asked for, in order."""
        return [int(c["durationSeconds"]) for c in self.calls if c["path"] == "/schedule"]


def _no_cuda_layer() -> types.ModuleType:
    # The functions spaces.zero.torch provides, as spaces defines them when torch is missing.
    layer = types.ModuleType("spaces.zero.torch")
    for name in ("enter_mode", "patch", "unpatch", "init", "move"):
        setattr(layer, name, lambda *args, **kwargs: None)
    layer.pack = layer.size = lambda *args, **kwargs: 0
    layer.is_in_bad_fork = lambda *args, **kwargs: False
    return layer


def emulate() -> DeviceApi:
    """Start the device API and make this process a ZeroGPU Space; call before ``spaces`` is imported."""
    if "spaces" in sys.modules:
        raise RuntimeError("emulate() must run before the spaces package is imported")
    api = DeviceApi()
    cgroup = os.path.join(tempfile.mkdtemp(prefix="zerogpu-"), "cgroup")
    with open(cgroup, "w") as handle:
        handle.write("0::/emulated-space\n")
    os.environ.update(SPACES_ZERO_GPU="true", SPACES_ZERO_DEVICE_API_URL=api.url,
                      ZEROGPU_PROC_SELF_CGROUP_PATH=cgroup, ZEROGPU_OFFLOAD_DIR=os.path.dirname(cgroup))
    sys.modules["spaces.zero.torch"] = _no_cuda_layer()
    return api


if __name__ == "__main__":
    script, *rest = sys.argv[1:]
    device_api = emulate()
    os.environ["ZEROGPU_EMULATOR_URL"] = device_api.url
    print(f"zerogpu emulator: device API at {device_api.url}", flush=True)
    sys.argv = [script, *rest]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
