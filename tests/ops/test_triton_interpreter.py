"""Triton's interpreter across versions: what the kernels hand it must work on every Triton the
package accepts (pyproject's floor up to the newest), not only the one CI installs."""

import inspect

import pytest

pytest.importorskip("triton")


def test_gaussian_kl_interpreter_kernel_takes_its_loop_bound_as_a_constant():
    # Triton 3.6's interpreter passes a runtime int to a kernel as a 1-element array, and the
    # forward's `range(0, CHUNK, BLOCK)` then fails under numpy 2 ("only 0-dimensional arrays can
    # be converted to Python scalars"): every interpreted gaussian_kl test failed on Triton 3.6.
    # The interpreter's kernel takes CHUNK as a constexpr, a plain Python int.
    from tiue.kernels import gaussian_kl

    assert _is_constexpr(gaussian_kl.gaussian_kl_partial_stats_kernel_interpreted, "CHUNK")
    # ... while the GPU's kernel keeps it a runtime value: one compiled kernel for every length.
    assert not _is_constexpr(gaussian_kl.gaussian_kl_partial_stats_kernel, "CHUNK")


def _is_constexpr(kernel, name: str) -> bool:
    """Whether a @triton.jit function (compiled or interpreted) declares `name` tl.constexpr."""
    annotation = inspect.signature(kernel.fn).parameters[name].annotation
    return "constexpr" in str(annotation)
