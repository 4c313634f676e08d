"""Which backend runs an op on a given device: availability, preference and TIUE_KERNELS.

Backends: "torch" (plain PyTorch, always there), "cpp" (tiue._C on CPU tensors), "triton"
(tiue.kernels on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1) and "cuda"
(tiue._C's CUDA kernels). Without TIUE_KERNELS, CUDA tensors try Triton then the CUDA
extension, CPU tensors the C++ kernels, and anything a backend cannot take (a dtype, a shape,
a missing build) goes to plain PyTorch. TIUE_KERNELS=<backend> uses that backend wherever it
implements the op and plain PyTorch elsewhere, and fails loudly if the backend is unavailable.

Each op module (tiue/ops/<op>.py) builds its OpDispatcher here and registers it, so that
backend_info() can list it; the helpers at the end route its custom op through the dispatcher
and load its Triton kernel module lazily.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tiue.ops import native

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "ENV_VAR",
    "BackendUnavailableError",
    "OpDispatcher",
    "backend_info",
    "forced_backend",
    "kernel_module",
    "last_backend",
    "note_choice",
    "on_device_of",
    "plain_torch_ops",
    "plain_torch_ops_active",
    "register_device_kernels",
    "register_dispatcher",
    "unavailable_reason",
]

ENV_VAR = "TIUE_KERNELS"
BACKENDS = ("torch", "cpp", "triton", "cuda")
TRITON_FLOOR = (3, 2)  # tuple kernel arguments (ddim_combine's coefficients)

# Preference per device type when nothing is forced. Triton comes first on CUDA by default:
# the CUDA extension stays selectable with TIUE_KERNELS=cuda until it measures faster.
# Triton on CPU tensors (the interpreter) is far too slow to be chosen unless forced.
# CUDA: the extension before Triton. On an H200 (2026-12-04, fp16, device time by CUDA events) an
# eager ddim_combine call cost 33 us of host time on `cuda` against 134-157 us on `triton`, while the
# kernels themselves took 1.3-5.2 us: an eager call is host-bound, so the cheaper launch wins. (Under
# torch.compile the ops are their composites and neither runs.)
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("cuda", "triton"), "cpu": ("cpp",)}

_log = logging.getLogger("tiue.ops")
_last_choice: dict[str, str] = {}
_announced: set[tuple[str, str, str]] = set()


class BackendUnavailableError(RuntimeError):
    """TIUE_KERNELS names a backend that cannot run at all in this process."""


def forced_backend() -> str | None:
    """The backend TIUE_KERNELS forces, or None for automatic choice ("" and "auto")."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(
            f"{ENV_VAR}: expected one of {', '.join(BACKENDS)} or auto (or unset), "
            f"got {os.environ[ENV_VAR]!r}"
        )
    return value


# A plain module global, not a ContextVar: torch.compile traces the op functions, and dynamo
# reads (and guards on) a global bool but cannot trace ContextVar.get. Process-wide: a
# conversion in one thread also switches the ops of the others for its duration.
_plain_torch_ops = False


@contextlib.contextmanager
def plain_torch_ops():
    """Inside this block the public op functions compute with standard PyTorch ops instead of
    calling tiue's custom ops, so that converters that know only standard ops (OpenVINO's
    PyTorch frontend, torch.jit.trace-based exporters) read the whole graph. Same values within
    fp32 rounding; nothing is dispatched to a kernel."""
    global _plain_torch_ops
    before, _plain_torch_ops = _plain_torch_ops, True
    try:
        yield
    finally:
        _plain_torch_ops = before


def plain_torch_ops_active() -> bool:
    return _plain_torch_ops


def triton_interpreted() -> bool:
    """Whether Triton kernels run in its interpreter (decided when a kernel module is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def unavailable_reason(backend: str) -> str | None:
    """None when `backend` can run in this process, else why not."""
    return _unavailable_reason(backend, triton_interpreted())


@functools.lru_cache(maxsize=None)
def _unavailable_reason(backend: str, interpreted: bool) -> str | None:
    if backend == "torch":
        return None
    if backend == "cpp":
        return native.load_error()
    if backend == "cuda":
        if native.load_error() is not None:
            return native.load_error()
        if not native.has_cuda_kernels():
            return "tiue._C was built without CUDA kernels (no CUDA torch or nvcc at build time)"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    if backend == "triton":
        if not _importable("triton"):
            return "triton is not installed"
        version = _version("triton")
        if version is not None and version < TRITON_FLOOR:
            return (
                f"triton {'.'.join(map(str, version))} is older than {'.'.join(map(str, TRITON_FLOOR))}, the "
                "oldest that compiles the kernels (tuple arguments); torch >= 2.6 brings a new enough one"
            )
        if not _importable("tiue.kernels"):
            return "tiue.kernels is missing from this copy of tiue"
        if not (torch.cuda.is_available() or interpreted):
            return "triton needs a CUDA device, or TRITON_INTERPRET=1 to run on CPU tensors"
        return None
    raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")


def _version(distribution: str) -> tuple[int, ...] | None:
    """(major, minor) of an installed distribution, None when unknown (say, a source build)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version(distribution).split(".")[:2]
        return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in parts)
    except (PackageNotFoundError, ValueError):
        return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module blocked with sys.modules[name] = None
        return False


def backend_devices(backend: str) -> tuple[str, ...] | None:
    """Device types a backend runs on; None means every device (plain PyTorch)."""
    if backend == "torch":
        return None
    if backend == "cpp":
        return ("cpu",)
    if backend == "cuda":
        return ("cuda",)
    return ("cuda", "cpu") if triton_interpreted() else ("cuda",)


@dataclass(frozen=True)
class Kernel:
    backend: str
    fn: Callable[..., Any]
    # Why this kernel cannot take the given arguments (a dtype, a size), or None if it can.
    rejects: Callable[..., str | None] | None = None


class OpDispatcher:
    """The kernels of one op by backend, and the rule that picks one per call."""

    def __init__(self, name: str, torch_fn: Callable[..., Any], auto_order: dict[str, tuple[str, ...]] | None = None):
        """auto_order: this op's own preference per device type where it differs from AUTO_ORDER
        (say, plain PyTorch on CUDA when the kernels measured slower there)."""
        self.name = name
        self._kernels: dict[str, Kernel] = {"torch": Kernel("torch", torch_fn)}
        self.auto_order = {**AUTO_ORDER, **(auto_order or {})}
        self._eager_choices: dict[tuple, Kernel] = {}

    def add(self, backend: str, fn: Callable[..., Any], rejects=None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        self._kernels[backend] = Kernel(backend, fn, rejects)

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self._kernels)

    def choose(self, device_type: str, args: tuple | None = None) -> Kernel:
        """The kernel for a call on `device_type` (args=None: ignore argument limits)."""
        forced = forced_backend()
        if forced is not None:
            reason = unavailable_reason(forced)
            if reason is not None:
                raise BackendUnavailableError(
                    f"{ENV_VAR}={forced}: the {forced} backend is unavailable: {reason}. "
                    f"Unset {ENV_VAR} to choose automatically, or force one of the available "
                    f"backends ({', '.join(b for b in BACKENDS if unavailable_reason(b) is None)})"
                )
            candidates: tuple[str, ...] = (forced,)
        else:
            candidates = self.auto_order.get(device_type, ())
        for backend in candidates:
            kernel = self._kernels.get(backend)
            devices = backend_devices(backend)
            if kernel is None or (devices is not None and device_type not in devices):
                continue
            if forced is None and unavailable_reason(backend) is not None:
                continue
            if args is not None and kernel.rejects is not None:
                reason = kernel.rejects(*args)
                if reason is not None:
                    _log.debug("tiue.ops.%s: %s kernel skipped: %s", self.name, backend, reason)
                    continue
            return kernel
        return self._kernels["torch"]

    def __call__(self, *args):
        device_type = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        kernel = self.choose(device_type, args)
        note_choice(self.name, device_type, kernel.backend)
        return kernel.fn(*args)

    def eager_choice(self, device_type: str) -> Kernel | None:
        """The kernel an eager call on `device_type` goes to when no argument limit applies,
        decided once per TIUE_KERNELS value (the public functions' hot path reads this instead
        of walking the preference list on every call); None when TIUE_KERNELS names an
        unavailable backend, so that the full path raises its error."""
        key = (device_type, os.environ.get(ENV_VAR), triton_interpreted())
        kernel = self._eager_choices.get(key)
        if kernel is None:
            try:
                kernel = self.choose(device_type)
            except (BackendUnavailableError, ValueError):
                return None
            self._eager_choices[key] = kernel
        return kernel

    def describe(self, device_type: str) -> str:
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        try:
            return self.choose(device_type).backend
        except (BackendUnavailableError, ValueError) as error:
            return f"error: {error}"


_dispatchers: dict[str, OpDispatcher] = {}

# Device types whose calls go through a dispatcher; other devices run the op's default (torch).
KERNEL_DEVICES = ("cpu", "cuda")


def register_dispatcher(dispatcher: OpDispatcher) -> OpDispatcher:
    _dispatchers[dispatcher.name] = dispatcher
    return dispatcher


def register_device_kernels(op, kernel: Callable[..., Any]) -> None:
    """Route a custom op's calls on every KERNEL_DEVICES tensor through `kernel`."""
    for device in KERNEL_DEVICES:
        op.register_kernel(device)(kernel)


def kernel_module(name: str):
    """tiue.kernels.<name>, imported on first use so that importing tiue.ops never imports triton
    (a dispatcher asks a Triton adapter or its rejects only once the backend is available)."""
    return importlib.import_module(f"tiue.kernels.{name}")


def on_device_of(tensor: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def note_choice(op: str, device_type: str, backend: str) -> None:
    """Record the backend a call of `op` ran on (last_backend), logging the first of each kind."""
    _last_choice[op] = backend
    key = (op, device_type, backend)
    if key not in _announced:
        _announced.add(key)
        _log.info("tiue.ops.%s on %s tensors: %s backend", op, device_type, backend)


def last_backend(op: str) -> str | None:
    """The backend the latest call of `op` ran on in this process (None before any call)."""
    return _last_choice.get(op)


def backend_info() -> dict[str, Any]:
    """What each op runs on, per device type, and why a backend is unavailable.

    {"forced": TIUE_KERNELS or None,
     "backends": {"torch": "available", "cpp": "available (...)" | "unavailable: why", ...},
     "ops": {"ddim_combine": {"cpu": "cpp", "cuda": "triton"}, ...},
     "implemented": {"ddim_combine": ["torch", "cpp", "cuda", "triton"], ...},
     "auto_order": {"ddim_combine": {"cpu": ["cpp"], "cuda": ["cuda", "triton"]}, ...}}
    A backend listed for an op may still hand a call it cannot take (say, float64 or more than
    128 keys) to plain PyTorch; `last_backend(op)` tells what the latest call used.
    """
    backends = {}
    for backend in BACKENDS:
        reason = unavailable_reason(backend)
        backends[backend] = "available" if reason is None else f"unavailable: {reason}"
    info = native.build_info()
    if info and backends["cpp"] == "available":
        backends["cpp"] += f" (tiue._C: {', '.join(f'{k}={v}' for k, v in info.items())})"
    if backends["triton"] == "available" and triton_interpreted():
        backends["triton"] += " (TRITON_INTERPRET=1: interpreter on CPU tensors)"
    return {
        "forced": os.environ.get(ENV_VAR) or None,
        "backends": backends,
        "ops": {
            name: {device: d.describe(device) for device in ("cpu", "cuda")}
            for name, d in _dispatchers.items()
        },
        "implemented": {name: list(d.backends) for name, d in _dispatchers.items()},
        "auto_order": {name: {k: list(v) for k, v in d.auto_order.items()} for name, d in _dispatchers.items()},
    }
