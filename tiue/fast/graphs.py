"""CUDA-graph capture of the one-pass sample: one graph per input signature.

Each graph owns static input buffers that callers' tensors are copied into, and a static
output that is copied out on every replay, so a later call never overwrites a tensor a
caller holds. All graphs share one memory pool. Graphs read parameters in place, so
weights copied into the same parameters are used by the next replay without recapture; weights
that move to new storage (`.to(...)`, offload, a LoRA fuse that swaps a weight tensor, another
memory format) leave the graphs pointing at freed memory, so the fast path asks
`tiue.fast.weight_watch` before each run and clears the cache when they moved.

Buffers and captures are made outside inference mode even when the first call runs in it: an
inference tensor cannot be written outside inference mode, and the next ordinary call writes
its inputs into the buffers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["GraphKey", "GraphCache", "CapturedCall"]


@dataclass(frozen=True)
class GraphKey:
    """What a captured graph is specialised to."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    device: str
    extra: tuple = ()

    @classmethod
    def of(cls, inputs: tuple[torch.Tensor, ...], extra: tuple = ()) -> GraphKey:
        return cls(
            shapes=tuple(tuple(t.shape) for t in inputs),
            dtypes=tuple(t.dtype for t in inputs),
            device=str(inputs[0].device),
            extra=extra,
        )


class CapturedCall:
    """Static buffers around `fn`; `replay` re-runs it on them and returns a copy of the output.

    `capture` records a CUDA graph; without one (`graph=None`), replay runs `fn` eagerly on
    the same buffers, which is how the bookkeeping is exercised where there is no GPU.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], example_inputs: tuple[torch.Tensor, ...]):
        self.fn = fn
        self.static_inputs = tuple(torch.empty_like(t).copy_(t) for t in example_inputs)
        self.static_output: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def capture(self, pool, warmup_runs: int = 2) -> None:
        if self.static_inputs[0].device.type != "cuda":
            raise RuntimeError(
                f"CUDA graphs need CUDA tensors, got inputs on {self.static_inputs[0].device}"
            )
        # Warm up on a side stream (lazy init, autotuning) before recording, as capture requires.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup_runs):
                self.fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.static_output = self.fn(*self.static_inputs)
        self.graph = graph

    def replay(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        for static, value in zip(self.static_inputs, inputs):
            static.copy_(value)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.static_output = self.fn(*self.static_inputs)
        return self.static_output.clone()


class GraphCache:
    """Captured calls keyed by GraphKey; an unseen key triggers one capture, not a failure."""

    def __init__(self, use_cuda_graphs: bool):
        self.use_cuda_graphs = use_cuda_graphs
        self._calls: dict[GraphKey, CapturedCall] = {}
        self._pool = None
        self.capture_seconds = 0.0
        self.stale_drops = 0  # times the weights moved and every graph was dropped

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, key: GraphKey) -> bool:
        return key in self._calls

    def keys(self) -> list[GraphKey]:
        return list(self._calls)

    def run(
        self, key: GraphKey, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        call = self._calls.get(key)
        if call is None:
            # inference_mode(False) turns grad mode on: no_grad keeps the capture free of autograd.
            with torch.inference_mode(False), torch.no_grad():
                call = CapturedCall(fn, inputs)
                if self.use_cuda_graphs:
                    start = time.perf_counter()
                    if self._pool is None:
                        self._pool = torch.cuda.graph_pool_handle()
                    call.capture(self._pool)
                    torch.cuda.synchronize()
                    self.capture_seconds += time.perf_counter() - start
            self._calls[key] = call
        return call.replay(inputs)

    def clear(self) -> None:
        self._calls.clear()
        self._pool = None
