"""`tiue serve`'s HTTP API against a real server subprocess with the embedded model."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import urllib.parse

import numpy as np
import pytest
from PIL import Image

# Images of one request within a shared pass against `tiue sample`'s own: same prompts, same
# per-image noise. Float rounding differs with the batch composition (oneDNN and the GEMMs pick
# kernels by batch size; `tiue sample --batch-size` changes its images the same way), which moves
# a pixel by at most one 8-bit level, rarely (about 0.1 pixels per 32x32 image measured).
MAX_LEVEL_DIFFERENCE = 1
MIN_EQUAL_FRACTION = 0.99
MAX_BATCH = 4  # the server fixture's --max-batch-size (tests/serve/conftest.py)


def decode(images: list[str]) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(text))), dtype=np.int16) for text in images]


def assert_same_images(served: list[np.ndarray], reference_paths) -> None:
    assert len(served) == len(reference_paths)
    for got, path in zip(served, reference_paths):
        want = np.asarray(Image.open(path), dtype=np.int16)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= MAX_LEVEL_DIFFERENCE, path.name
        assert (got == want).mean() >= MIN_EQUAL_FRACTION, path.name


def post_all(server, bodies: list[dict]) -> list[tuple[int, dict, bytes]]:
    """Send the requests at once, one thread each."""
    results: list = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        barrier.wait()
        results[i] = server.post("/api/generate", bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_requests_share_one_pass_and_each_gets_its_own_images(server, sample_reference):
    assert server.get_json("/api/stats")["max_batch_size"] == MAX_BATCH
    bodies = [
        {"prompt": "a red circle", "seed": 11},
        {"prompt": "a blue square", "seed": 5, "count": 2},
        {"prompt": ["a green triangle"], "seed": 40},
    ]
    assert sum(body.get("count", 1) for body in bodies) == MAX_BATCH
    before = server.get_json("/api/stats")
    results = post_all(server, bodies)
    for (status, headers, body), sent in zip(results, bodies):
        assert status == 200, body
        answer = json.loads(body)
        # All four images were in one pass: the server says so per request and in its stats.
        assert answer["batch_sizes"] == [MAX_BATCH]
        assert headers["X-Tiue-Batch-Sizes"] == str(MAX_BATCH)
        count = sent.get("count", 1)
        assert answer["seeds"] == list(range(sent["seed"], sent["seed"] + count))
        prompt = sent["prompt"] if isinstance(sent["prompt"], str) else sent["prompt"][0]
        # The same images as `tiue sample --prompt P (count times) --seed S`, in order.
        assert_same_images(decode(answer["images"]), sample_reference([prompt] * count, sent["seed"]))
    after = server.get_json("/api/stats")
    assert after["batch_sizes"].get(str(MAX_BATCH), 0) == before["batch_sizes"].get(str(MAX_BATCH), 0) + 1
    assert after["requests"] == before["requests"] + len(bodies)


def test_a_requests_images_do_not_depend_on_who_shares_its_pass(server):
    body = {"prompt": "two yellow circles", "seed": 7, "count": 2}
    first = post_all(server, [body, {"prompt": "a purple star", "seed": 1, "count": MAX_BATCH - 2}])[0]
    second = post_all(server, [{"prompt": "a white cross", "seed": 90, "count": MAX_BATCH - 2}, body])[1]
    alone = server.post("/api/generate", body)
    first, second, alone = (json.loads(answer[2]) for answer in (first, second, alone))
    assert first["batch_sizes"] == second["batch_sizes"] == [MAX_BATCH] and alone["batch_sizes"] == [2]
    # Passes of one size: the same pixels, whatever the other images in the pass and their order.
    for a, b in zip(decode(first["images"]), decode(second["images"])):
        assert np.array_equal(a, b)
    # A pass of another size rounds differently, by at most one level here and there.
    for a, b in zip(decode(first["images"]), decode(alone["images"])):
        assert np.abs(a - b).max() <= MAX_LEVEL_DIFFERENCE
        assert (a == b).mean() >= MIN_EQUAL_FRACTION


def test_png_route_returns_tiue_samples_image(server, sample_reference):
    status, headers, body = server.post("/api/generate.png", {"prompt": "a red circle", "seed": 3})
    assert status == 200 and headers["Content-Type"] == "image/png"
    served = np.asarray(Image.open(io.BytesIO(body)), dtype=np.int16)
    assert_same_images([served], sample_reference(["a red circle"], 3))


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": "   "}, 400, "prompt"),
        ({"prompt": "a" * 100_000}, 400, "prompt"),
        ({}, 400, "prompt"),
        ({"prompt": 5}, 400, "prompt"),
        ({"prompt": "a cat", "count": 0}, 400, "count"),
        ({"prompt": "a cat", "count": 10_000}, 400, "count"),
        ({"prompt": "a cat", "count": 2.5}, 400, "count"),
        ({"prompt": "a cat", "seed": -1}, 400, "seed"),
        ({"prompt": "a cat", "seed": 2**64}, 400, "seed"),
        ({"prompt": "a cat", "seed": "1"}, 400, "seed"),
        ({"prompt": "a cat", "steps": 0}, 400, "steps"),
        ({"prompt": "a cat", "steps": 1000}, 400, "steps"),
        ({"prompt": "a cat", "height": 30}, 400, "height"),
        ({"prompt": "a cat", "height": 4096, "width": 4096}, 400, "height, width"),
        ({"prompt": "a cat", "path": "/etc/passwd"}, 400, "path"),
        ({"prompt": "a cat", "negative_prompt": "a dog"}, 400, "negative_prompt"),  # the server has no guidance
        (b"{not json", 400, "request body"),
        (b"[1, 2]", 400, "request body"),
        (b"\xff\xfe", 400, "request body"),
        (b'{"prompt": "' + b"a" * 300_000 + b'"}', 413, "request body"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_one_line_reason(server, body, status, field):
    got, headers, answer = server.post("/api/generate", body)
    assert got == status
    message = json.loads(answer)["error"]
    assert message.startswith(f"{field}: ") and "\n" not in message
    assert headers["X-Tiue-Error"].startswith(f"{field}: ")


def test_the_server_keeps_serving_after_bad_requests(server):
    for body in (b"{", {"prompt": ""}, {"prompt": "x", "count": 10_000}):
        assert server.post("/api/generate", body)[0] in (400, 413)
    status, _, body = server.post("/api/generate", {"prompt": "a red circle"})
    assert status == 200 and len(json.loads(body)["images"]) == 1


def test_png_route_takes_one_image(server):
    status, _, answer = server.post("/api/generate.png", {"prompt": "a cat", "count": 2})
    assert status == 400 and json.loads(answer)["error"].startswith("count: ")


def test_a_client_that_disconnects_leaves_its_pass_answered_for_the_others(server):
    before = server.get_json("/api/stats")
    url = urllib.parse.urlsplit(server.url)
    payload = json.dumps({"prompt": "a blue square", "seed": 2}).encode()
    # One client sends a request for one image and hangs up before the answer.
    quitter = socket.create_connection((url.hostname, url.port), timeout=30)
    quitter.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    quitter.close()
    # The others complete the pass it is waiting in.
    results = post_all(server, [{"prompt": "a red circle", "seed": 1, "count": MAX_BATCH - 1}])
    status, _, body = results[0]
    assert status == 200
    assert json.loads(body)["batch_sizes"] == [MAX_BATCH]
    after = server.get_json("/api/stats")
    assert after["failed_passes"] == before["failed_passes"]
    assert server.post("/api/generate", {"prompt": "a green triangle"})[0] == 200


def test_the_docs_gradio_client_call_gets_the_apis_images(server, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(server.url, verbose=False, download_files=str(tmp_path))
    images, status = client.predict(prompt="a red circle", seed=3, count=2, steps=4, api_name="/generate")
    assert status.startswith("2 images (seed 3..4, K = 4) in "), status
    _, _, body = server.post("/api/generate", {"prompt": "a red circle", "seed": 3, "count": 2})
    for image, want in zip(images, decode(json.loads(body)["images"])):
        got = np.asarray(Image.open(image["image"]), dtype=np.int16)
        assert np.abs(got - want).max() <= MAX_LEVEL_DIFFERENCE
