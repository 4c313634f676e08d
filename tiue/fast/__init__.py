"""The fast path: the loop-free pass (tiue.loopfree) compiled and CUDA-graph captured, fused
projections, in-place weight loading. `TiUEPipeline.enable_fast_path()` is the entry point."""

from tiue.fast.graphs import GraphCache, GraphKey
from tiue.fast.path import FastPath, FastPathStats
from tiue.fast.weights import load_weights_in_place

__all__ = ["FastPath", "FastPathStats", "GraphCache", "GraphKey", "load_weights_in_place"]
