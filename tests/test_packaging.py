"""Packaging: the sdist carries every file a build needs, and an install without a compiled
tiue._C (what pip's default isolated build gives: no torch at build time) builds it on first use.

One C++ compile for the whole file (about a minute on two cores, marked slow): the sdist is
installed into a fresh virtual environment the way an isolated build installs it, and the first
op call there compiles tiue._C from the installed sources into a temporary cache.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import types
from pathlib import Path

import pytest

from tiue import build, build_spec

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
NOTICE = "tiue: building the C++ kernels"

pytestmark = pytest.mark.skipif(
    not (ROOT / "setup.py").exists() or not CSRC.is_dir(), reason="needs a source checkout"
)


def _included_headers(path: Path, seen: set[Path]) -> None:
    """Add every file `path` reaches through #include "..." (resolved from its folder)."""
    for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), flags=re.M):
        header = (path.parent / name).resolve()
        assert header.exists(), f"{path} includes {name}, which is missing"
        if header not in seen:
            seen.add(header)
            _included_headers(header, seen)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """An sdist of this checkout, built as `python -m build --sdist --no-isolation` would."""
    out = tmp_path_factory.mktemp("sdist")
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out / result.stdout.strip().splitlines()[-1]


def test_sdist_carries_every_build_input(sdist):
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = {Path(p).resolve() for p in build_spec.build_inputs(str(CSRC))}
    for source in build_spec.sources(str(CSRC), with_cuda=True):
        _included_headers(Path(source), needed)
    needed = {str(p.relative_to(ROOT)) for p in needed}
    assert {"csrc/ops.h", "csrc/cpu/multiversion.h", "csrc/cuda/launchers.h"} <= needed  # the scan works
    needed |= {"setup.py", "pyproject.toml", "MANIFEST.in", "tiue/build_spec.py", "tiue/build.py",
               "tiue/embedded/shapes/model_index.json"}
    assert not needed - names, f"{sdist.name} lacks {sorted(needed - names)}"
    assert not [n for n in names if n.endswith((".so", ".pyd", ".o"))], "the sdist carries a binary"
    assert top == f"tiue-{__import__('tiue').__version__}"


_SUBPACKAGES_PROBE = textwrap.dedent(
    """
    import sys
    import tiue
    subpackages = ("ops", "eval", "train", "fast", "world", "data", "testing", "kernels", "cli")
    eager = [m for m in ("torch", "diffusers", *(f"tiue.{name}" for name in subpackages)) if m in sys.modules]
    assert not eager, f"import tiue imported {eager}"
    assert set(subpackages) <= set(dir(tiue))
    assert "backends" in tiue.ops.backend_info()  # what the README tells a new user to run
    for name in subpackages:
        assert getattr(tiue, name) is sys.modules[f"tiue.{name}"], name
    assert tiue.devices is sys.modules["tiue.devices"]
    for missing in ("no_such_module", "_C_missing"):
        assert not hasattr(tiue, missing), missing
    print("ok")
    """
)


def test_subpackages_are_attributes_imported_on_first_access():
    """`import tiue; tiue.ops.backend_info()` works, and `import tiue` alone imports none of them."""
    result = subprocess.run(
        [sys.executable, "-c", _SUBPACKAGES_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# -- the first-use build, its lock and its cache, without a compiler: fake cpp_extension.load --


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(build.NO_BUILD_ENV, raising=False)
    monkeypatch.setenv("TIUE_SKIP_CUDA_BUILD", "1")
    # build.load registers what it loads as tiue._C: put the real one back afterwards.
    monkeypatch.setitem(sys.modules, build_spec.EXTENSION, sys.modules.get(build_spec.EXTENSION))
    return tmp_path / "cache" / "extensions"


def _fake_load(behaviour, calls):
    def load(name, sources, build_directory, **kwargs):
        calls.append(sources)
        folder = Path(build_directory)
        (folder / "_C.so").write_bytes(b"half a module")  # what a killed linker leaves
        (folder / "ddim_combine.o").write_bytes(b"")
        if behaviour == "fail":
            raise RuntimeError("Error building extension '_C': no compiler\nmore log")
        if behaviour == "interrupt":
            raise KeyboardInterrupt
        module = types.ModuleType("_C")
        module.__file__ = str(folder / "_C.so")
        return module

    return load


def test_first_use_build_publishes_only_a_loaded_module(fake_cache, monkeypatch):
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", _fake_load("ok", calls))
    folder = build.cache_folder(with_cuda=False)
    stale = folder.with_name(folder.name + ".partial-killed")  # left by a killed build
    stale.mkdir(parents=True)
    (stale / "_C.so").write_bytes(b"half a module")
    module, reason = build.load("no module named tiue._C")
    assert reason is None and len(calls) == 1
    assert all(s.startswith(build_spec.csrc_dir(str(ROOT / "tiue"))) for s in calls[0])
    assert [p for p in fake_cache.iterdir() if p.is_dir()] == [folder]
    assert sorted(p.name for p in folder.iterdir()) == ["_C.so", build.RECORD]  # objects dropped
    assert module.__file__ == str(folder / "_C.so")
    assert not list(fake_cache.glob("*.partial-*")) and not stale.exists()


def test_failed_build_is_remembered_not_retried(fake_cache, monkeypatch, capsys):
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", _fake_load("fail", calls))
    module, reason = build.load("no module named tiue._C")
    assert module is None and "failed (Error building extension '_C': no compiler)" in reason
    assert NOTICE in capsys.readouterr().err
    (log,) = fake_cache.glob("*.failed")
    assert "more log" in log.read_text()
    assert not [p for p in fake_cache.iterdir() if p.is_dir()]  # nothing published, no scratch
    module, reason = build.load("no module named tiue._C")
    assert len(calls) == 1 and "failed earlier" in reason and str(log) in reason
    assert NOTICE not in capsys.readouterr().err


def test_interrupted_build_leaves_nothing_that_loads(fake_cache, monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", _fake_load("interrupt", []))
    with pytest.raises(KeyboardInterrupt):
        build.load("no module named tiue._C")
    assert list(fake_cache.iterdir()) == [next(fake_cache.glob("*.lock"))]  # no module, no log


def test_no_jit_build_variable_and_build_false(fake_cache, monkeypatch):
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", _fake_load("ok", calls))
    module, reason = build.load("no module named tiue._C", build=False)
    assert module is None and "not built yet" in reason and "tiue info --build" in reason
    monkeypatch.setenv(build.NO_BUILD_ENV, "1")
    module, reason = build.load("no module named tiue._C")
    assert module is None and "TIUE_NO_JIT_BUILD=1" in reason
    assert not calls and not fake_cache.exists()


def test_a_broken_cached_module_is_reported_not_raised(fake_cache, monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", _fake_load("ok", []))
    build.load("no module named tiue._C")  # publishes a fake module
    module, reason = build.load("no module named tiue._C")
    assert module is None and "failed to load" in reason and "delete the folder" in reason


def test_a_truncated_cached_module_is_never_loaded_but_built_again(fake_cache, monkeypatch, capsys):
    """A cached module cut short (full disk, a copy cut off) would crash the process with SIGBUS
    when loaded: it is compared with its build's record first, discarded and rebuilt."""
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", _fake_load("ok", calls))
    build.load("no module named tiue._C")
    folder = build.cache_folder(with_cuda=False)
    module_file = folder / "_C.so"
    module_file.write_bytes(module_file.read_bytes()[:4])
    module, reason = build.load("no module named tiue._C", build=False)  # what `tiue info` does
    assert module is None and "is damaged (_C.so has 4 bytes" in reason and "rebuilds it" in reason
    module, reason = build.load("no module named tiue._C")
    assert reason is None and len(calls) == 2, reason
    assert "damaged (_C.so has 4 bytes, the build wrote 13)" in capsys.readouterr().err
    assert module_file.read_bytes() == b"half a module" and not list(fake_cache.glob("*.partial-*"))
    # A folder from before the record (or with its record lost) is rebuilt too, not loaded.
    (folder / build.RECORD).unlink()
    module, reason = build.load("no module named tiue._C")
    assert reason is None and len(calls) == 3 and (folder / build.RECORD).is_file()


def test_unusable_cache_or_missing_ninja_is_a_reason_not_an_exception(fake_cache, monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", _fake_load("ok", calls))
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    module, reason = build.load("no module named tiue._C")
    assert module is None and "pip install ninja" in reason
    assert not fake_cache.exists()  # nothing recorded: installing ninja is enough
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "a-file"))
    module, reason = build.load("no module named tiue._C")
    assert module is None and "is unusable" in reason and "TIUE_CACHE" in reason and not calls


# -- the real thing: sdist -> fresh venv without tiue._C -> first op call compiles it ---------

_PROBE = textwrap.dedent(
    """
    import json, torch, tiue, tiue.ops
    from tiue.ops import native
    noise, eps = torch.randn(2, 3, 4, 4), torch.randn(3, 2, 3, 4, 4)
    coeffs = [0.5, 0.25, 0.125, 0.0625]
    out = torch.ops.tiue.ddim_combine(noise, eps, coeffs, 2.0, None)
    expected = 2.0 * (coeffs[0] * noise + sum(c * e for c, e in zip(coeffs[1:], eps)))
    print(json.dumps({
        "tiue": tiue.__file__, "backend": tiue.ops.last_backend("ddim_combine"),
        "error": float((out - expected).abs().max()), "location": native.location(),
        "cpp": tiue.ops.backend_info()["backends"]["cpp"],
    }))
    """
)


def _site_dirs() -> list[str]:
    # Where torch and the other dependencies are installed. Their .pth files are not read in
    # the venv, so an editable install of this checkout does not leak its tiue._C into it.
    return sorted({p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")})


@pytest.fixture(scope="module")
def venv_without_extension(sdist, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(purelib, "_dependencies.pth").write_text("\n".join(_site_dirs()) + "\n")
    # pip's isolated build has no torch, so setup.py installs only the sources: hide torch.
    hide = root / "hide-torch"
    hide.mkdir()
    (hide / "torch.py").write_text("raise ImportError('torch is hidden, as in an isolated build')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIUE_", "PIP_"))}
    result = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", str(sdist)],
        cwd=root, env={**env, "PYTHONPATH": str(hide)}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    package = Path(purelib) / "tiue"
    assert not list(package.glob("_C*")), "the install compiled tiue._C although torch was hidden"
    assert (package / "csrc" / "cpu" / "multiversion.h").exists()
    env.pop("PYTHONPATH", None)
    return {"python": str(python), "package": package, "cwd": root,
            "env": {**env, build.CACHE_ENV: str(root / "cache")}, "cache": root / "cache"}


def _probe(venv: dict, **extra_env) -> subprocess.Popen:
    return subprocess.Popen(
        [venv["python"], "-c", _PROBE], cwd=venv["cwd"], env={**venv["env"], **extra_env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _result(process: subprocess.Popen) -> tuple[dict, str]:
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1]), stderr


@pytest.mark.slow
def test_installed_sdist_builds_the_kernels_once_on_first_use(venv_without_extension):
    venv = venv_without_extension
    # Two processes start on an empty cache: one builds, the other waits on the lock.
    first, second = _probe(venv), _probe(venv)
    results = [_result(first), _result(second)]
    for info, _ in results:
        assert info["tiue"].startswith(str(venv["package"]))  # the installed copy, not the checkout
        assert info["backend"] == "cpp", info
        assert info["error"] < 1e-5
        assert info["location"].startswith(str(venv["cache"]))
    assert sum(stderr.count(NOTICE) for _, stderr in results) == 1, [s for _, s in results]

    info, stderr = _result(_probe(venv))  # a later process reuses the cache
    assert NOTICE not in stderr and info["backend"] == "cpp"
    assert "cpu=yes" in info["cpp"]
    assert not list((venv["cache"] / "extensions").glob("*.partial-*"))
    assert not list((venv["cache"] / "extensions").glob("*.failed"))

    info, stderr = _result(_probe(venv, TIUE_NO_JIT_BUILD="1"))
    assert info["backend"] == "torch" and info["location"] is None
    assert "TIUE_NO_JIT_BUILD=1" in info["cpp"] and NOTICE not in stderr


@pytest.mark.slow
def test_a_truncated_cached_build_is_rebuilt_not_loaded(venv_without_extension):
    """A cached tiue._C cut short (a full disk, a copy cut off): loading it maps pages past the
    end of the file and the process dies with SIGBUS. It is detected and built again instead."""
    venv = venv_without_extension
    info, _ = _result(_probe(venv))  # builds, unless the test above already did
    module_file = Path(info["location"])
    data = module_file.read_bytes()
    # Cut inside the segments the loader maps: loading it as it is dies with SIGBUS (exit -7).
    module_file.write_bytes(data[:65536])

    process = _probe(venv)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, f"exit {process.returncode}: {stderr[-3000:]}"
    info = json.loads(stdout.strip().splitlines()[-1])
    assert info["backend"] == "cpp" and info["error"] < 1e-5, info
    assert "are damaged" in stderr and stderr.count(NOTICE) == 1, stderr[-3000:]
    assert Path(info["location"]).stat().st_size == len(data)
    assert not list((venv["cache"] / "extensions").glob("*.partial-*"))
