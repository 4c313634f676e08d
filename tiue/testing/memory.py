"""Peak tensor memory of a piece of eager PyTorch code, on any device, CPU included.

torch.cuda's allocator statistics exist only on CUDA. This counts, at the ATen level, the
storages that ops allocate while the context is active and frees them when their last
tensor dies, so it measures the peak bytes held by tensors created inside the block.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["PeakMemory"]


class PeakMemory(TorchDispatchMode):
    """Context manager: `with PeakMemory() as mem: ...`, then `mem.peak_bytes`.

    Storages that existed before the block (parameters, inputs) are not counted.
    """

    def __init__(self):
        super().__init__()
        self.current_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, list[int]] = {}  # storage address -> [bytes, live tensor count]

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current_bytes -= entry[0]
            del self._live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs or {}))[0]
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self._live:
                self._live[key][1] += 1
            elif key in inputs or storage.nbytes() == 0:
                continue  # an in-place result or view of an untracked tensor
            else:
                self._live[key] = [storage.nbytes(), 1]
                self.current_bytes += storage.nbytes()
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
            weakref.finalize(tensor, self._release, key)
        return out
