"""Noticing that a model's weights moved to new storage, cheaply enough to ask on every call.

A captured CUDA graph reads each parameter and buffer at the address it had when it was captured.
Weights copied into those tensors in place are fine (the graph reads the new values); weights that
get new storage (`.to()`, a memory-format change, offload, a Parameter or a submodule replaced)
leave the graph reading freed memory.

Walking the models for every tensor's address costs milliseconds per call at SD2.1's size (934
tensors in the UNet and VAE: medians of 6.9 and 8.6 ms in two runs on the shared development
CPU). Instead the tensors are listed once, and each call compares their addresses with the
recorded ones in one pass over the list (62 us there; tools/weight_watch_cost.py measures both). A replaced Parameter, buffer
or submodule does not change the listed tensors' addresses, so torch's global registration hooks
count the registrations made on any watched module (a module of a watched model when it was last
listed; modules that others build, such as the ModuleList a diffusers block slices on each eager
forward, do not count): when the count moved, the list is made again and compared in full
(addresses, strides, dtypes).
`relayouts` counts the moves that changed more than addresses (strides, shapes, dtypes, devices):
those need compiled code made for the new layout, not only new graphs.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["WeightWatch", "registrations"]

_data_ptr = torch.Tensor.data_ptr

_registrations = 0
_hooks_installed = False
_watched: weakref.WeakSet = weakref.WeakSet()  # every module of every watched model


def _count(module, _name, _value) -> None:  # returns None: the registered object is kept as it is
    global _registrations
    # Code being traced registers throwaway modules (the ModuleList a diffusers block slices);
    # reading the WeakSet there made dynamo guard on its contents, which the garbage collector
    # changes (a flaky IndexError while building the guards). Real moves happen outside traces.
    if torch.compiler.is_compiling():
        return
    if module in _watched:
        _registrations += 1


def registrations() -> int:
    """How many parameters, buffers and submodules watched modules registered since the first watch."""
    return _registrations


def _install_hooks() -> None:
    # Once per process: the hooks hold no reference to any model, only bump a counter.
    global _hooks_installed
    if not _hooks_installed:
        from torch.nn.modules import module

        module.register_module_parameter_registration_hook(_count)
        module.register_module_buffer_registration_hook(_count)
        module.register_module_module_registration_hook(_count)
        _hooks_installed = True


class WeightWatch:
    """`moved()`: whether the models' parameters and buffers changed storage since the last call
    (or since the watch was made)."""

    def __init__(self, models: Iterable[nn.Module]):
        _install_hooks()
        self.models = tuple(models)
        self.relayouts = 0  # times moved() found new strides, shapes, dtypes or devices
        self._snapshot()

    def _layout(self) -> tuple:
        return tuple((t.data_ptr(), t.stride(), t.dtype) for t in self._tensors)

    def _shapes(self) -> tuple:
        # What compiled code is specialised to (addresses aside): new values here need a recompile.
        return tuple((t.shape, t.stride(), t.dtype, t.device) for t in self._tensors)

    def _snapshot(self) -> None:
        self._registrations = _registrations
        for model in self.models:
            _watched.update(model.modules())
        self._tensors = [t for model in self.models for t in (*model.parameters(), *model.buffers())]
        self._pointers = [t.data_ptr() for t in self._tensors]
        self._full = self._layout()
        self._shaped = self._shapes()

    def moved(self) -> bool:
        if self._registrations == _registrations and list(map(_data_ptr, self._tensors)) == self._pointers:
            return False
        before, shapes = self._full, self._shaped
        self._snapshot()
        if self._shaped != shapes:
            self.relayouts += 1
        return self._full != before
