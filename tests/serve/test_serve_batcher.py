"""The batcher and the request checks on their own (no server, no gradio). The batcher is given a
sampling function that names each image by its prompt and seed, so the tests see exactly which
image went where; tests/serve/test_serve_api.py runs it with the real model."""

from __future__ import annotations

import threading
import time

import pytest

from tiue.serve.batcher import Batcher
from tiue.serve.requests import Limits, ModelBounds, RequestError, parse_json, parse_request

BOUNDS = ModelBounds(default_size=32, size_multiple=4)


class Recorder:
    """A sampling function that records each pass and returns "prompt/seed" per image."""

    def __init__(self, fail_on: str | None = None):
        self.passes: list[list[str]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, prompts, negative_prompts, seeds, steps, height, width):
        with self.lock:
            self.passes.append([f"{p}/{s}/K{steps}" for p, s in zip(prompts, seeds)])
        if self.fail_on in prompts:
            raise RuntimeError(f"cannot draw {self.fail_on}")
        return [f"{p}/{s}" for p, s in zip(prompts, seeds)]


def request(prompt, seed=0, count=1, steps=4):
    return parse_request({"prompt": prompt, "seed": seed, "count": count, "steps": steps}, Limits(), BOUNDS)


def test_requests_waiting_together_share_a_pass_that_fires_when_full():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=4, max_wait=30)
    start = time.monotonic()
    first, second = batcher.submit(request("a", 10, count=2)), batcher.submit(request("b", 20, count=2))
    assert first.future.result(timeout=10) == ["a/10", "a/11"]
    assert second.future.result(timeout=10) == ["b/20", "b/21"]
    assert time.monotonic() - start < 10  # a full pass does not wait out max_wait
    assert recorder.passes == [["a/10/K4", "a/11/K4", "b/20/K4", "b/21/K4"]]
    assert first.batch_sizes == second.batch_sizes == [4]
    assert batcher.stats.as_dict()["mean_batch_size"] == 4
    batcher.close()


def test_a_lone_request_runs_when_its_wait_ends():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=8, max_wait=0.05)
    assert batcher.submit(request("a", 3)).future.result(timeout=10) == ["a/3"]
    assert recorder.passes == [["a/3/K4"]]
    batcher.close()


def test_a_request_larger_than_a_pass_is_split_in_order():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=3, max_wait=0)
    pending = batcher.submit(request("a", 0, count=7))
    assert pending.future.result(timeout=10) == [f"a/{s}" for s in range(7)]
    assert [len(p) for p in recorder.passes] == [3, 3, 1]
    assert pending.batch_sizes == [3, 3, 1]
    batcher.close()


def test_images_of_different_steps_never_share_a_pass():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=8, max_wait=0.2)
    four, two = batcher.submit(request("a", 0, steps=4)), batcher.submit(request("b", 0, steps=2))
    assert four.future.result(timeout=10) == ["a/0"] and two.future.result(timeout=10) == ["b/0"]
    assert sorted(recorder.passes) == [["a/0/K4"], ["b/0/K2"]]
    batcher.close()


def test_a_failed_pass_fails_its_requests_and_the_batcher_goes_on():
    recorder = Recorder(fail_on="boom")
    batcher = Batcher(recorder, max_batch_size=2, max_wait=5)
    bad, neighbour = batcher.submit(request("boom")), batcher.submit(request("a"))
    with pytest.raises(RuntimeError, match="cannot draw boom"):
        bad.future.result(timeout=10)
    with pytest.raises(RuntimeError):
        neighbour.future.result(timeout=10)  # it shared the failed pass
    assert batcher.submit(request("b", count=2)).future.result(timeout=10) == ["b/0", "b/1"]
    assert batcher.stats.failed_passes == 1
    batcher.close()


def test_prompts_and_counts_expand_into_seed_plus_i():
    got = parse_request({"prompt": ["x", "y"], "seed": 5, "count": 2}, Limits(), BOUNDS)
    assert got.prompts == ("x", "x", "y", "y") and got.seeds == (5, 6, 7, 8)
    assert (got.steps, got.height, got.width) == (4, 32, 32)


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"prompt": "x", "count": 9, "seed": 0}, "count"),  # 2 prompts x 9 > 16 below
        ({"prompt": "x", "seed": 2**63 - 1, "count": 2}, "seed"),  # seed + 1 passes torch's range
        ({"prompt": "x", "steps": True}, "steps"),
        ({"prompt": "x", "width": 34}, "width"),
    ],
)
def test_request_errors_name_the_field(payload, field):
    if field == "count":
        payload = {**payload, "prompt": ["x", "y"]}
    with pytest.raises(RequestError, match=f"^{field}: "):
        parse_request(payload, Limits(), BOUNDS)


def test_steps_the_model_refuses_are_reported():
    bounds = ModelBounds(32, 4, steps_error=lambda k: "reaches timestep 1000" if k > 2 else None)
    with pytest.raises(RequestError, match="^steps: reaches timestep 1000"):
        parse_request({"prompt": "x", "steps": 3}, Limits(), bounds)


def test_a_body_over_the_limit_is_refused_with_413():
    with pytest.raises(RequestError) as error:
        parse_json(b"x" * 101, Limits(max_body_bytes=100))
    assert error.value.status == 413


def test_a_failed_requests_remaining_images_are_not_sampled():
    recorder = Recorder(fail_on="boom")
    batcher = Batcher(recorder, max_batch_size=2, max_wait=0)
    with pytest.raises(RuntimeError):
        batcher.submit(request("boom", count=5)).future.result(timeout=10)
    assert batcher.submit(request("a")).future.result(timeout=10) == ["a/0"]
    assert recorder.passes == [["boom/0/K4", "boom/1/K4"], ["a/0/K4"]]
    batcher.close()
