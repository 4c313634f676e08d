"""Performance-critical tensor ops of tiue, each also a torch op (`torch.ops.tiue.<name>`).

- `ddim_combine`: the loop-free DDIM chain's final latent in one pass.
- `gaussian_kl`: per-sample KL of N(mean, var) to N(0, 1), differentiable.
- `shared_kv_attention`: K query groups attending one shared key/value batch.

Every op runs on the best available backend: Triton (or the CUDA extension) for CUDA tensors,
the C++ extension for CPU tensors, plain PyTorch otherwise; `TIUE_KERNELS=torch|cpp|triton|cuda`
forces one. `backend_info()` says what is in use. Importing this package never needs a GPU,
triton or the compiled extension. See docs/kernels.md.

Each op lives in its own module, `tiue/ops/<op>.py` (torch op, fallback, checks, backend
table). The package attribute `tiue.ops.<op>` is the public function, not that module: reach
the module with `from tiue.ops.<op> import ...`.
"""

from __future__ import annotations

from tiue.ops.dispatch import BackendUnavailableError, backend_info, last_backend, plain_torch_ops

# Imported in this order so that backend_info() lists the ops in it; each import registers its
# torch.ops.tiue.* ops, and binds the package attribute to the public function, not the module.
from tiue.ops.ddim_combine import ddim_combine
from tiue.ops.gaussian_kl import gaussian_kl
from tiue.ops.shared_kv_attention import shared_kv_attention

__all__ = [
    "BackendUnavailableError",
    "backend_info",
    "ddim_combine",
    "gaussian_kl",
    "last_backend",
    "plain_torch_ops",
    "shared_kv_attention",
]
