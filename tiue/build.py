"""The first-use build of tiue._C, for installs that did not compile it.

pip's default isolated build has no torch, so `pip install .` installs tiue without tiue._C.
The first op that wants it then compiles the package's own sources (what tiue/build_spec.py
lists, with the same flags as setup.py) with torch.utils.cpp_extension into a per-user cache:

    $TIUE_CACHE/extensions/<torch version>-<python>-<cpu|cuda>-<hash>/_C.so

TIUE_CACHE defaults to $XDG_CACHE_HOME/tiue, else ~/.cache/tiue; the hash covers the sources,
the flags and the torch build, so a new torch or new sources build afresh. One process builds
while others wait on a file lock. The build runs in a scratch folder that is renamed into place
only once the module has loaded, so a killed build never leaves a module that a later process
would load. A failed build leaves <folder>.failed (its log), so later processes do not retry it
on every start; delete that file to retry. TIUE_NO_JIT_BUILD=1 turns all of this off.

The published folder also holds module.json: the module's file name, size and SHA-256, written
before the folder is published. A module that no longer matches it (truncated by a full disk or a
copy cut short, which would crash the process with SIGBUS when loaded) is never loaded: it is
discarded and built again, as is a folder without the record.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from tiue import build_spec
from tiue.cache import CACHE_ENV, cache_root

__all__ = ["CACHE_ENV", "NO_BUILD_ENV", "cache_folder", "estimate_s", "load"]

NO_BUILD_ENV = "TIUE_NO_JIT_BUILD"
# Seconds one source file took to compile (torch's headers dominate): C++ only on 2 shared cores
# took 41 s for 3 files, C++ and CUDA on 16 cores 19 s for 6. Said in the notice so that nobody
# takes the wait for a hang.
SECONDS_PER_FILE = 20
RECORD = "module.json"  # what a complete build's module is: file name, size, SHA-256

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def load(why_missing: str, build: bool = True) -> tuple[ModuleType | None, str | None]:
    """tiue._C from the cache, compiled first if needed; (module, None) or (None, why not).

    `why_missing`: why the installed tiue._C did not import. build=False only loads a cached
    build (what `tiue info` does unless asked to build).
    """
    if build_spec.flag(NO_BUILD_ENV):
        return None, (
            f"tiue._C is not built ({why_missing}) and {NO_BUILD_ENV}=1 turns off building it on "
            "first use; unset it, or install with `pip install --no-build-isolation .`"
        )
    csrc = build_spec.csrc_dir(_PACKAGE_DIR)
    if csrc is None:
        return None, f"tiue._C is not built ({why_missing}) and this copy of tiue has no C++ sources"

    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    with_cuda, why_cuda = build_spec.cuda_decision(torch, CUDA_HOME)
    # A CUDA build that fails falls back to C++ only, unless TIUE_FORCE_CUDA=1 asked for CUDA.
    variants = [True, False] if with_cuda and not build_spec.flag("TIUE_FORCE_CUDA") else [with_cuda]
    failures = []
    for cuda in variants:
        folder = cache_folder(cuda, csrc)
        try:
            module, failure = _load_variant(folder, csrc, cuda, why_cuda, build)
        except OSError as error:  # say, a read-only home: the ops still run on other backends
            module, failure = None, f"the cache folder {folder.parent} is unusable ({error}); set {CACHE_ENV}"
        if module is not None:
            return module, None
        failures.append(failure)
    if not build and all(f is None for f in failures):
        return None, (
            f"tiue._C is not built yet for torch {torch.__version__}: the first op call builds it "
            f"(about {estimate_s(csrc, with_cuda)} s), or run `tiue info --build`"
        )
    return None, "; ".join(f for f in failures if f)


def estimate_s(csrc: str, with_cuda: bool) -> int:
    """A rough build time: ninja compiles the files in parallel, one per core."""
    rounds = math.ceil(len(build_spec.sources(csrc, with_cuda)) / max(1, os.cpu_count() or 1))
    return 10 * math.ceil((SECONDS_PER_FILE * rounds + 5) / 10)


def cache_folder(with_cuda: bool, csrc: str | None = None) -> Path:
    """Where the build of this package's sources for this torch and Python lives (or would)."""
    import torch

    csrc = csrc or build_spec.csrc_dir(_PACKAGE_DIR)
    digest = hashlib.sha256()
    for part in (build_spec.source_hash(csrc, with_cuda), torch.version.git_version, sys.version):
        digest.update(str(part).encode())
    tag = sys.implementation.cache_tag or "python"
    key = f"{torch.__version__}-{tag}-{'cuda' if with_cuda else 'cpu'}-{digest.hexdigest()[:12]}"
    return cache_root() / "extensions" / key


def _load_variant(
    folder: Path, csrc: str, with_cuda: bool, why_cuda: str, build: bool
) -> tuple[ModuleType | None, str | None]:
    """(module, None) when `folder` holds a build or one was just made, else (None, failure)."""
    failed_log = folder.with_name(folder.name + ".failed")
    damage = _damage(folder) if folder.is_dir() else None
    if folder.is_dir() and damage is None:
        return _import_built(folder)
    if damage is not None and not build:
        return None, f"the tiue._C cached in {folder} is damaged ({damage}); the next op call rebuilds it"
    if damage is None and failed_log.exists():
        return None, (
            f"building tiue._C on first use failed earlier (log: {failed_log}); delete that file "
            "to try again"
        )
    if not build:
        return None, None
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():  # not recorded as a failure: installing ninja fixes it
        return None, "building tiue._C on first use needs ninja: `pip install ninja`"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _lock(folder.with_name(folder.name + ".lock")):
        if folder.is_dir():
            damage = _damage(folder)
            if damage is None:  # another process built it while this one waited
                return _import_built(folder)
            print(f"tiue: the cached C++ kernels in {folder} are damaged ({damage}); building them again",
                  file=sys.stderr, flush=True)
            discarded = folder.with_name(f"{folder.name}.partial-damaged-{os.getpid()}")
            os.replace(folder, discarded)  # never loaded: removed with the other leftovers below
        for stale in glob.glob(str(folder) + ".partial-*"):  # left by killed builds
            shutil.rmtree(stale, ignore_errors=True)
        return _build(folder, failed_log, csrc, with_cuda, why_cuda)


@contextlib.contextmanager
def _lock(path: Path):
    from filelock import FileLock, Timeout  # a torch dependency

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"tiue: waiting for another process building the C++ kernels ({path})", file=sys.stderr,
              flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _build(
    folder: Path, failed_log: Path, csrc: str, with_cuda: bool, why_cuda: str
) -> tuple[ModuleType | None, str | None]:
    from torch.utils import cpp_extension

    kind = "C++ and CUDA" if with_cuda else "C++"
    print(
        f"tiue: building the {kind} kernels for this torch (once, about {estimate_s(csrc, with_cuda)} s) "
        f"into {folder}...",
        file=sys.stderr, flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
    macros = [f"-D{build_spec.CUDA_MACRO}"] if with_cuda else []
    started = time.perf_counter()
    try:
        module = cpp_extension.load(
            name="_C",
            sources=build_spec.sources(csrc, with_cuda),
            extra_cflags=[*build_spec.CXX_FLAGS, *macros],
            extra_cuda_cflags=[*build_spec.NVCC_FLAGS, *macros] if with_cuda else None,
            build_directory=str(scratch),
            with_cuda=with_cuda,
        )
        for path in scratch.iterdir():  # objects and ninja files: only the module is kept
            if path.name != os.path.basename(module.__file__):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        _record(scratch / os.path.basename(module.__file__))
        scratch.rename(folder)  # the atomic step: the folder exists only with a loaded module
    except BaseException as error:
        shutil.rmtree(scratch, ignore_errors=True)
        if not isinstance(error, Exception):  # Ctrl-C and the like: no failure recorded
            raise
        failed_log.write_text(
            f"tiue._C first-use build ({kind}; CUDA decision: {why_cuda}) failed after "
            f"{time.perf_counter() - started:.0f} s:\n{error}\n"
        )
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"building tiue._C on first use failed ({first_line}); log: {failed_log}"
    module.__file__ = str(folder / os.path.basename(module.__file__))
    sys.modules[build_spec.EXTENSION] = module
    return module, None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(module_file: Path) -> None:
    """Write module.json beside a built module (before its folder is published)."""
    record = {"file": module_file.name, "size": module_file.stat().st_size, "sha256": _file_digest(module_file)}
    (module_file.parent / RECORD).write_text(json.dumps(record) + "\n")


def _damage(folder: Path) -> str | None:
    """Why the module in a published folder must not be loaded, None when it matches its record.
    Loading a truncated module maps pages past its end: the process dies with SIGBUS."""
    try:
        record = json.loads((folder / RECORD).read_text())
        module_file = folder / record["file"]
        size, expected = int(record["size"]), str(record["sha256"])
    except FileNotFoundError:
        return f"no {RECORD}: not a complete build of this tiue"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable {RECORD}: {error}"
    if os.path.basename(record["file"]) != record["file"] or not module_file.is_file():
        return f"{record['file']} is missing"
    actual = module_file.stat().st_size
    if actual != size:
        return f"{module_file.name} has {actual} bytes, the build wrote {size}"
    if _file_digest(module_file) != expected:
        return f"{module_file.name} differs from the build's (SHA-256)"
    return None


def _import_built(folder: Path) -> tuple[ModuleType | None, str | None]:
    """Import the module in a published cache folder (checked against its record) as tiue._C."""
    module_file = folder / json.loads((folder / RECORD).read_text())["file"]
    # The module's init function is named after its file (_C, or _C_v1 after a rebuild in-process).
    name = "tiue." + module_file.name.split(".")[0]
    try:
        spec = importlib.util.spec_from_file_location(name, module_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as error:
        return None, f"the tiue._C built in {folder} failed to load ({error}); delete the folder to rebuild"
    sys.modules[build_spec.EXTENSION] = module
    return module, None
