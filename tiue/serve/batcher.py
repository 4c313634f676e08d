"""Dynamic batching: the images of requests that arrive close together are sampled in one
pipeline call.

One worker thread owns the pipeline. It takes the oldest waiting image, then keeps collecting
images of the same kind (same K and size) until `max_batch_size` images are in hand or
`max_wait` has passed since that oldest image arrived, and samples them in one call. Each image
keeps its own prompt and seed (one torch.Generator per image, as `tiue sample` makes them), so a
request gets its own images whichever others shared its pass. Requests are never cancelled
mid-pass: a client that goes away leaves its pass, and the other requests in it, untouched.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from tiue.serve.requests import GenerateRequest

__all__ = ["Batcher", "BatchStats", "Pending"]

# sample(prompts, negative_prompts, seeds, steps, height, width) -> one image per prompt, in order
SampleFunction = Callable[[Sequence[str], Sequence[str], Sequence[int], int, int, int], list]


@dataclass
class Pending:
    """A request being served: its images arrive in `images` as passes complete."""

    request: GenerateRequest
    future: Future = field(default_factory=Future)
    images: list = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)  # the size of each pass it took part in
    arrived: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.images = [None] * self.request.count
        self.remaining = self.request.count


@dataclass
class BatchStats:
    """Counters since the server started (reported at /api/stats)."""

    passes: int = 0
    images: int = 0
    requests: int = 0
    failed_passes: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)  # size -> passes

    def as_dict(self) -> dict:
        return {
            "passes": self.passes,
            "images": self.images,
            "requests": self.requests,
            "failed_passes": self.failed_passes,
            "mean_batch_size": self.images / self.passes if self.passes else 0.0,
            "max_batch_size_seen": max(self.batch_sizes, default=0),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }


class Batcher:
    """Collects requests' images into passes of `sample` on one worker thread."""

    def __init__(self, sample: SampleFunction, max_batch_size: int = 8, max_wait: float = 0.02):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: expected an integer >= 1, got {max_batch_size}")
        if max_wait < 0:
            raise ValueError(f"max_wait: expected seconds >= 0, got {max_wait}")
        self.sample = sample
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.stats = BatchStats()
        # (pending, index of the image in its request, arrival time), oldest first
        self._queue: collections.deque[tuple[Pending, int, float]] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="tiue-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: GenerateRequest) -> Pending:
        """Queue a request's images; `pending.future` resolves to the list of its images."""
        pending = Pending(request)
        with self._ready:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self.stats.requests += 1
            self._queue.extend((pending, i, pending.arrived) for i in range(request.count))
            self._ready.notify()
        return pending

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()

    def _take_batch(self) -> list[tuple[Pending, int, float]] | None:
        """Wait for the oldest image, then gather same-kind images until full or its wait ends."""
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if not self._queue:
                return None  # closed
            key = self._queue[0][0].request.batch_key()
            deadline = self._queue[0][2] + self.max_wait
            while True:
                matching = sum(1 for p, _, _ in self._queue if p.request.batch_key() == key)
                remaining = deadline - time.monotonic()
                if matching >= self.max_batch_size or remaining <= 0 or self._closed:
                    break
                self._ready.wait(remaining)
            batch, kept = [], collections.deque()
            for item in self._queue:
                if len(batch) < self.max_batch_size and item[0].request.batch_key() == key:
                    batch.append(item)
                else:
                    kept.append(item)
            self._queue = kept
            return batch

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list[tuple[Pending, int, float]]) -> None:
        first = batch[0][0].request
        prompts = [pending.request.prompts[i] for pending, i, _ in batch]
        negatives = [pending.request.negative_prompt for pending, _, _ in batch]
        seeds = [pending.request.seeds[i] for pending, i, _ in batch]
        try:
            images = self.sample(prompts, negatives, seeds, first.steps, first.height, first.width)
        except Exception as error:  # the pass failed: its requests fail, the server goes on
            self.stats.failed_passes += 1
            failed = {id(p): p for p, _, _ in batch}
            for pending in failed.values():
                if not pending.future.done():
                    pending.future.set_exception(error)
            with self._ready:  # a failed request's images still queued are not sampled
                self._queue = collections.deque(item for item in self._queue if id(item[0]) not in failed)
            return
        self.stats.passes += 1
        self.stats.images += len(batch)
        self.stats.batch_sizes[len(batch)] += 1
        requests = {id(p): p for p, _, _ in batch}.values()
        for pending in requests:
            pending.batch_sizes.append(len(batch))
        for (pending, index, _), image in zip(batch, images):
            pending.images[index] = image
            pending.remaining -= 1
        for pending in requests:
            if pending.remaining == 0 and not pending.future.done():
                pending.future.set_result(pending.images)
