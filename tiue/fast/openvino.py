"""The fast path's OpenVINO backend: the one pass converted once per input signature to an
OpenVINO model and run by OpenVINO's CPU plugin, in fp32.

On a CPU it beats inductor on the same pass (docs/benchmarks.md). The conversion reads the pass
with tiue's ops as standard PyTorch ops (tiue.ops.plain_torch_ops), so OpenVINO sees ordinary
convolutions, matmuls and attention. Everything that is fixed for a signature (timesteps, their
embeddings, coefficients, whether to decode, and the weights) becomes a constant of the
converted model: new weights need a new conversion (FastPath.bakes_weights). The guidance scale,
which the fast path passes as a tensor, is an input like the latents and the text: a new scale
runs the same converted model.

Precision: fp32 only. OpenVINO's CPU default on processors with bf16 units is bf16 inference,
which would move z_0 far beyond fp32 tolerances; the hint is set to f32 explicitly.
torch.compile's "openvino" backend is not used: with torch 2.13 it fails in dynamo's guard
building for any model.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn

from tiue import ops

__all__ = ["OpenVINOPass", "openvino_unavailable_reason"]


def openvino_unavailable_reason() -> str | None:
    """None when the openvino package is importable, else why not."""
    if importlib.util.find_spec("openvino") is None:
        return "the openvino package is not installed (pip install openvino)"
    return None


class _PassWithConstants(nn.Module):
    """The one pass with everything but the per-call inputs fixed: what gets converted."""

    def __init__(self, one_pass, timesteps, timestep_embeddings, coeffs, decode, guidance_scale, added_keys):
        super().__init__()
        self.one_pass = one_pass
        self.timesteps, self.timestep_embeddings = timesteps, timestep_embeddings
        self.coeffs, self.decode, self.guidance_scale, self.added_keys = coeffs, decode, guidance_scale, added_keys

    def forward(self, latents: torch.Tensor, text: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        """rest: the added conditions in added_keys' order, then the guidance scale when it is
        an input (a tensor) rather than a constant."""
        added_kwargs = dict(zip(self.added_keys, rest)) if self.added_keys else None
        scale = rest[len(self.added_keys)] if len(rest) > len(self.added_keys) else self.guidance_scale
        return self.one_pass(
            latents, text, self.timesteps, self.timestep_embeddings, self.coeffs, self.decode, scale, added_kwargs,
        )


class OpenVINOPass:
    """Callable with OnePass's arguments; converts and compiles on the first call of each
    signature (shapes, timesteps, coefficients, decode, guidance, added-condition keys)."""

    def __init__(self, one_pass, num_threads: int | None = None):
        reason = openvino_unavailable_reason()
        if reason is not None:
            raise ImportError(f"backend='openvino': {reason}")
        import openvino

        self.one_pass = one_pass
        self.num_threads = num_threads
        self._core = openvino.Core()
        self._requests: dict[tuple, object] = {}

    def __call__(self, latents, text, timesteps, timestep_embeddings, coeffs, decode, guidance_scale=None,
                 added_cond_kwargs=None) -> torch.Tensor:
        added_keys = tuple(sorted(added_cond_kwargs or {}))
        inputs = (latents, text, *(added_cond_kwargs[k] for k in added_keys))
        scale_input = isinstance(guidance_scale, torch.Tensor)
        if scale_input:
            inputs += (guidance_scale,)
        for name, tensor in zip(("latents", "text", *added_keys, "guidance_scale"), inputs):
            if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
                raise ValueError(
                    f"backend='openvino': runs fp32 CPU pipelines only; {name} is {tensor.dtype} on "
                    f"{tensor.device} (use backend='inductor')"
                )
        key = (
            tuple((tuple(t.shape), t.dtype) for t in inputs), tuple(timesteps.tolist()), tuple(coeffs), decode,
            "input" if scale_input else guidance_scale, added_keys,
        )
        request = self._requests.get(key)
        if request is None:
            fixed = _PassWithConstants(
                self.one_pass, timesteps, timestep_embeddings, coeffs, decode, None if scale_input else guidance_scale,
                added_keys,
            )
            request = self._requests[key] = self._compile(fixed, inputs)
        result = request.infer([t.contiguous().numpy() for t in inputs])
        # The request reuses its output buffer on the next call: hand out a copy.
        return torch.from_numpy(result[0].copy())

    def _compile(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        import openvino

        with torch.no_grad(), ops.plain_torch_ops(), warnings.catch_warnings():
            # Tracing warns at every shape-dependent Python branch; the converted model is per
            # signature, so those branches are fixed by design.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")  # OpenVINO traces
            model = openvino.convert_model(module, example_input=tuple(t.contiguous() for t in inputs))
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        threads = self.num_threads or torch.get_num_threads()
        config["INFERENCE_NUM_THREADS"] = threads
        return self._core.compile_model(model, "CPU", config).create_infer_request()

    def clear(self) -> None:
        self._requests.clear()
