"""One `tiue serve` subprocess with the embedded model for the whole session, on a free loopback port.

Its flags make merging deterministic: a pass fires when MAX_BATCH images wait, or WAIT_MS after
the oldest arrived, so requests sent together for MAX_BATCH images in all share one pass.
"""

from __future__ import annotations

import json
from email.message import Message
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

MAX_BATCH = 4
WAIT_MS = 1000
STARTUP_SECONDS = 180
REPO = Path(__file__).resolve().parents[2]


def serve_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "tiue", "serve", "--port", "0", *flags]


def subprocess_env(tmp: Path) -> dict[str, str]:
    # The subprocesses import the tiue under test (this checkout), whatever is installed. Gradio
    # keeps its output files under GRADIO_TEMP_DIR; nothing reaches the internet.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # The server computes with as many threads as this process (tests/conftest.py sets them), so
    # that a pass of one image is the same computation as `tiue sample`'s here.
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                GRADIO_TEMP_DIR=str(tmp), PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(torch.get_num_threads()))


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log: list[str]):
        self.process, self.url, self.log = process, url, log

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


def start_server(tmp: Path, *flags: str) -> Server:
    """Start `tiue serve` and wait for its "on http://..." line (or fail with its output)."""
    process = subprocess.Popen(serve_command(*flags), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=subprocess_env(tmp), cwd=tmp)
    log: list[str] = []
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:
            log.append(line)
            if not found and " on http://" in line:
                found.append(line.rsplit(" on ", 1)[1].strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not found and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not found:
        process.kill()
        raise RuntimeError("tiue serve did not start:\n" + "".join(log[-30:]))
    return Server(process, found[0], log)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    pytest.importorskip("gradio", reason="tiue serve needs the serve extra: pip install -e '.[serve]'")
    running = start_server(tmp_path_factory.mktemp("serve"), "--max-batch-size", str(MAX_BATCH),
                           "--max-wait-ms", str(WAIT_MS))
    yield running
    stop_server(running)
    assert running.process.returncode is not None


@pytest.fixture(scope="session")
def sample_reference(tmp_path_factory):
    """`tiue sample`'s PNGs for (prompts, seed): the CLI run in this process (the model loads
    once), with as many threads as the server has; cached per call."""
    from tiue.cli import main

    cache: dict = {}
    root = tmp_path_factory.mktemp("reference")

    def reference(prompts: list[str], seed: int) -> list[Path]:
        key = (tuple(prompts), seed)
        if key not in cache:
            out = root / f"run{len(cache)}"
            arguments = ["sample", "--seed", str(seed), "--out", str(out)]
            for prompt in prompts:
                arguments += ["--prompt", prompt]
            assert main(arguments) == 0
            cache[key] = [out / f"{i:05d}-seed{seed + i}.png" for i in range(len(prompts))]
        return cache[key]

    return reference
