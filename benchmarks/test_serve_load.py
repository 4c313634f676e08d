"""Load test of `tiue serve` on loopback: 1, 4 and 16 concurrent clients, each sending a bounded
number of one-image requests, against the embedded model on CPU, with batching on
(--max-batch-size 8, --max-wait-ms 20) and off (--max-batch-size 1). Not part of the test suite.

    python -m pytest benchmarks/test_serve_load.py -q -s
    TIUE_SERVE_BENCH_REQUESTS=16 TIUE_SERVE_BENCH_CLIENTS=1,4,16 python -m pytest benchmarks/test_serve_load.py -q -s

Reports requests/s, images/s, p50/p90/p99 latency (seconds, per request, as the client sees
it), the mean pass size (from the server's /api/stats) and the requests lost (anything but a
200 with its image), which must be 0. Speed is reported, never asserted. Settings:
TIUE_SERVE_BENCH_REQUESTS (per client, 8), _CLIENTS (1,4,16), _THREADS (the server's torch
threads, 1: steady on shared cores), _MAX_BATCH (8), _WAIT_MS (20), _RESULTS_DIR (benchmarks/results).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WARMUP_REQUESTS = 4


def _settings() -> dict:
    env = os.environ.get
    return {
        "requests_per_client": int(env("TIUE_SERVE_BENCH_REQUESTS", "8")),
        "clients": [int(c) for c in env("TIUE_SERVE_BENCH_CLIENTS", "1,4,16").split(",")],
        "threads": int(env("TIUE_SERVE_BENCH_THREADS", "1")),
        "max_batch": int(env("TIUE_SERVE_BENCH_MAX_BATCH", "8")),
        "wait_ms": float(env("TIUE_SERVE_BENCH_WAIT_MS", "20")),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _load(server, clients: int, requests_per_client: int) -> dict:
    """`clients` threads, each sending its requests one after another; latencies per request."""
    latencies: list[float] = []
    lost = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        barrier.wait()
        for r in range(requests_per_client):
            body = {"prompt": ["a red circle", "a blue square", "a green triangle"][r % 3], "seed": index * 1000 + r}
            start = time.perf_counter()
            try:
                status, _, answer = server.post("/api/generate", body, timeout=300)
                ok = status == 200 and len(json.loads(answer)["images"]) == 1
            except Exception:
                ok = False
            with lock:
                latencies.append(time.perf_counter() - start)
                lost[0] += not ok

    before = server.get_json("/api/stats")
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    after = server.get_json("/api/stats")
    passes = after["passes"] - before["passes"]
    images = after["images"] - before["images"]
    done = clients * requests_per_client - lost[0]
    return {
        "clients": clients,
        "requests": clients * requests_per_client,
        "lost": lost[0],
        "seconds": seconds,
        "requests_per_s": done / seconds,
        "images_per_s": images / seconds,
        "p50_s": statistics.median(latencies),
        "p90_s": _percentile(latencies, 0.9),
        "p99_s": _percentile(latencies, 0.99),
        "mean_batch": images / passes if passes else 0.0,
    }


def test_serve_load(tmp_path):
    pytest.importorskip("gradio", reason="tiue serve needs the serve extra")
    from tiue.testing.serve_process import ServeProcess

    settings = _settings()
    modes = {"batching": ["--max-batch-size", str(settings["max_batch"]), "--max-wait-ms", str(settings["wait_ms"])],
             "one at a time": ["--max-batch-size", "1", "--max-wait-ms", "0"]}
    rows = []
    for mode, flags in modes.items():
        with ServeProcess(tmp_path, *flags, threads=settings["threads"]) as server:
            for i in range(WARMUP_REQUESTS):
                assert server.post("/api/generate", {"prompt": "warm up", "seed": i})[0] == 200
            for clients in settings["clients"]:
                rows.append({"mode": mode, **_load(server, clients, settings["requests_per_client"])})
    lines = [
        f"`tiue serve` load test: the embedded `shapes` model (32x32 images, K = 4), CPU, "
        f"{settings['threads']} torch thread(s) in the server; {settings['requests_per_client']} one-image requests "
        f"per client, sent one after another; batching: --max-batch-size {settings['max_batch']} "
        f"--max-wait-ms {settings['wait_ms']:g}; one at a time: --max-batch-size 1.",
        f"Measured {datetime.date.today().isoformat()} on {_cpu_name()} ({os.cpu_count()} cores, shared).",
        "",
        "| mode | clients | requests | lost | requests/s | images/s | p50 (s) | p90 (s) | p99 (s) | mean pass size |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['clients']} | {row['requests']} | {row['lost']} | "
                     f"{row['requests_per_s']:.1f} | {row['images_per_s']:.1f} | {row['p50_s']:.3f} | "
                     f"{row['p90_s']:.3f} | {row['p99_s']:.3f} | {row['mean_batch']:.2f} |")
    report = "\n".join(lines)
    print("\n" + report)
    results = Path(os.environ.get("TIUE_SERVE_BENCH_RESULTS_DIR", REPO / "benchmarks" / "results"))
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"serve-load-cpu-{settings['threads']}-threads"
    for path, text in ((stem.with_suffix(".md"), report + "\n"),
                       (stem.with_suffix(".json"), json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)  # never a half-written report
    assert all(row["lost"] == 0 for row in rows), "requests were lost"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "this CPU"
