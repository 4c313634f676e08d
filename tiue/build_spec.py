"""What the compiled extension tiue._C is built from: its sources, flags and CUDA decision.

One definition for both builds: setup.py (at install time, when torch is importable there) and
tiue.build (on first use, when the install could not build it). Standard library only: setup.py
loads this file by path, before tiue is installed and possibly without torch.
"""

from __future__ import annotations

import glob
import hashlib
import os

EXTENSION = "tiue._C"
# Relative to the C++ source folder (csrc/ in a checkout and an sdist, tiue/csrc/ when installed).
CPU_SOURCES = ("*.cpp", "cpu/*.cpp")
CUDA_SOURCES = ("cuda/*.cpp", "cuda/*.cu")
HEADERS = ("*.h", "cpu/*.h", "cuda/*.h", "cuda/*.cuh")
CXX_FLAGS = ("-O3", "-fopenmp-simd")  # omp simd pragmas only: threads come from ATen
NVCC_FLAGS = ("-O3", "-lineinfo")
CUDA_MACRO = "TIUE_WITH_CUDA"


def flag(name: str) -> bool:
    """Whether the environment variable `name` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def csrc_dir(package_dir: str) -> str | None:
    """The C++ source folder for the tiue package at `package_dir`, None when it ships none.

    An installed package carries it as tiue/csrc; a checkout (editable install, PYTHONPATH) has
    it next to the package.
    """
    for candidate in (os.path.join(package_dir, "csrc"), os.path.join(package_dir, os.pardir, "csrc")):
        if os.path.isfile(os.path.join(candidate, "registration.cpp")):
            return os.path.normpath(candidate)
    return None


def _glob(csrc: str, patterns: tuple[str, ...]) -> list[str]:
    return [path for pattern in patterns for path in sorted(glob.glob(os.path.join(csrc, pattern)))]


def sources(csrc: str, with_cuda: bool) -> list[str]:
    """The files compiled into tiue._C: the C++ kernels, and the CUDA ones when `with_cuda`."""
    return _glob(csrc, CPU_SOURCES + (CUDA_SOURCES if with_cuda else ()))


def build_inputs(csrc: str) -> list[str]:
    """Every file a build may read from `csrc`: all sources and headers, CUDA ones included."""
    return sorted(set(_glob(csrc, CPU_SOURCES + CUDA_SOURCES + HEADERS)))


def source_hash(csrc: str, with_cuda: bool) -> str:
    """A short hash of everything that shapes the binary besides torch and Python themselves."""
    digest = hashlib.sha256()
    for path in build_inputs(csrc):
        digest.update(os.path.relpath(path, csrc).replace(os.sep, "/").encode())
        with open(path, "rb") as file:
            digest.update(file.read())
    digest.update(repr((CXX_FLAGS, NVCC_FLAGS, with_cuda)).encode())
    if with_cuda:  # the GPU architectures compiled for
        digest.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    return digest.hexdigest()[:12]


def cuda_decision(torch, cuda_home: str | None) -> tuple[bool, str]:
    """Whether to build the CUDA kernels too, and why. `cuda_home`: cpp_extension.CUDA_HOME.

    TIUE_SKIP_CUDA_BUILD=1 builds C++ only; TIUE_FORCE_CUDA=1 builds CUDA regardless.
    """
    if flag("TIUE_SKIP_CUDA_BUILD"):
        return False, "TIUE_SKIP_CUDA_BUILD=1"
    if flag("TIUE_FORCE_CUDA"):
        return True, "TIUE_FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a build without CUDA"
    if cuda_home is None:
        return False, "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    return True, f"torch CUDA {torch.version.cuda}, nvcc under {cuda_home}"
