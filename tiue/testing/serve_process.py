"""A `tiue serve` subprocess for tests and benchmarks: started on a free loopback port, ready
when it prints its URL, with a small HTTP client (standard library only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

__all__ = ["ServeProcess", "serve_environment"]

REPO = Path(__file__).resolve().parents[2]


def serve_environment(tmp: Path, threads: int | None = None) -> dict[str, str]:
    """The subprocess's environment: it imports this checkout's tiue (whatever is installed),
    Gradio keeps its files under `tmp` and reaches nothing outside, and `threads` (when given)
    fixes torch's CPU threads."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(tmp), PYTHONUNBUFFERED="1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class ServeProcess:
    """`tiue serve --port 0 FLAGS`; `url` once it listens. Use as a context manager."""

    def __init__(self, tmp: Path, *flags: str, threads: int | None = None, startup_seconds: float = 180):
        command = [sys.executable, "-m", "tiue", "serve", "--port", "0", *flags]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=serve_environment(tmp, threads), cwd=tmp)
        self.log: list[str] = []
        found: list[str] = []

        def read() -> None:
            for line in self.process.stdout:
                self.log.append(line)
                if not found and " on http://" in line:
                    found.append(line.rsplit(" on ", 1)[1].strip())

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + startup_seconds
        while not found and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if not found:
            self.stop()
            raise RuntimeError("tiue serve did not start:\n" + "".join(self.log[-30:]))
        self.url = found[0]

    def post(self, path: str, body: bytes | dict, timeout: float = 120) -> tuple[int, Message, bytes]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.url + path.lstrip("/"), data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
