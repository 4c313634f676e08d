"""Backend selection: automatic choice, TIUE_KERNELS forcing, backend_info, bare imports."""

import json
import subprocess
import sys

import pytest

import tiue.ops
from tiue.ops import dispatch

from .support import randn

OPS = ("ddim_combine", "gaussian_kl", "gaussian_kl_backward", "shared_kv_attention", "shared_kv_attention_backward")


def _call_every_op():
    noise, eps = randn(1, 2, 3, 3), randn(2, 1, 2, 3, 3, seed=1)
    tiue.ops.ddim_combine(noise, eps, [0.5, 0.3, 0.2])
    tiue.ops.gaussian_kl(randn(2, 5))
    q, k = randn(2, 1, 1, 4, 8), randn(1, 1, 3, 8, seed=1)
    tiue.ops.shared_kv_attention(q, k, k)


def test_backend_info_lists_every_op_and_backend():
    info = tiue.ops.backend_info()
    assert set(info) == {"forced", "backends", "ops", "implemented", "auto_order"}
    assert set(info["backends"]) == set(dispatch.BACKENDS)
    assert info["backends"]["torch"] == "available"
    assert set(info["ops"]) == set(OPS)
    for devices in info["ops"].values():
        assert set(devices) == {"cpu", "cuda"}
    assert info["implemented"]["ddim_combine"] == ["torch", "cpp", "cuda", "triton"]
    assert all(backends[0] == "torch" for backends in info["implemented"].values())
    json.dumps(info)  # plain data, printable as JSON


def test_cpu_default_prefers_cpp(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    expected = "cpp" if dispatch.unavailable_reason("cpp") is None else "torch"
    info = tiue.ops.backend_info()["ops"]
    assert info["ddim_combine"]["cpu"] == expected
    assert info["gaussian_kl"]["cpu"] == expected
    assert info["shared_kv_attention"]["cpu"] == "torch"  # no C++ attention kernel
    _call_every_op()
    assert tiue.ops.last_backend("ddim_combine") == expected


def test_forced_torch_runs_plain_pytorch(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    _call_every_op()
    assert all(tiue.ops.last_backend(op) == "torch" for op in ("ddim_combine", "gaussian_kl", "shared_kv_attention"))


def test_forced_backend_without_the_op_uses_plain_pytorch(monkeypatch):
    if dispatch.unavailable_reason("cpp") is not None:
        pytest.skip("cpp backend unavailable")
    monkeypatch.setenv(dispatch.ENV_VAR, "cpp")
    _call_every_op()
    assert tiue.ops.last_backend("ddim_combine") == "cpp"
    assert tiue.ops.last_backend("shared_kv_attention") == "torch"


def test_forced_backend_a_kernel_cannot_take_uses_plain_pytorch(monkeypatch):
    if dispatch.unavailable_reason("cpp") is not None:
        pytest.skip("cpp backend unavailable")
    monkeypatch.setenv(dispatch.ENV_VAR, "cpp")
    noise, eps = randn(1, 2, 3, 3), randn(2, 1, 2, 3, 3, seed=1).half()  # mixed dtypes
    tiue.ops.ddim_combine(noise, eps, [0.5, 0.3, 0.2])
    assert tiue.ops.last_backend("ddim_combine") == "torch"


def test_unavailable_forced_backend_fails_loudly(monkeypatch):
    missing = next((b for b in ("cuda", "triton", "cpp") if dispatch.unavailable_reason(b)), None)
    if missing is None:
        pytest.skip("every backend is available here")
    monkeypatch.setenv(dispatch.ENV_VAR, missing)
    with pytest.raises(tiue.ops.BackendUnavailableError, match=f"TIUE_KERNELS={missing}: the {missing} backend is unavailable"):
        tiue.ops.gaussian_kl(randn(2, 5))
    assert tiue.ops.backend_info()["ops"]["gaussian_kl"]["cpu"].startswith("error:")


def test_unknown_backend_name_is_rejected(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="TIUE_KERNELS: expected one of torch, cpp, triton, cuda or auto"):
        tiue.ops.gaussian_kl(randn(2, 5))


@pytest.mark.parametrize("value", ["", "auto", "AUTO"])
def test_auto_values(monkeypatch, value):
    monkeypatch.setenv(dispatch.ENV_VAR, value)
    assert dispatch.forced_backend() is None


def _bare_import(*blocked: str) -> dict:
    """Import tiue.ops in a fresh interpreter with `blocked` unimportable; return backend_info."""
    code = (
        "import json, sys, torch\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
        + "import tiue.ops\n"
        "x = torch.randn(3, 4)\n"
        "kl = tiue.ops.gaussian_kl(x)\n"
        "assert kl.shape == (3,)\n"
        "print(json.dumps(tiue.ops.backend_info()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_without_the_extension_or_triton():
    info = _bare_import("tiue._C", "triton")
    assert info["backends"]["cpp"].startswith("unavailable: tiue._C is not built")
    assert info["backends"]["triton"] == "unavailable: triton is not installed"
    assert info["ops"]["ddim_combine"]["cpu"] == "torch"
