"""Build script for tiue.

The pure-Python package always installs. It also builds the compiled extension `tiue._C` with
torch.utils.cpp_extension (ninja when available):
- the C++ CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) always;
- the CUDA kernels (csrc/cuda/) when torch has CUDA and nvcc is found.
Environment overrides:
- TIUE_SKIP_CUDA_BUILD=1: C++ only. TIUE_FORCE_CUDA=1: build the CUDA part even if torch or
  the environment do not look CUDA-capable, and fail the install if it does not build.
- TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0") and MAX_JOBS are read by torch.utils.cpp_extension.
A failed optional build prints a warning and installs the package without it (the ops then run
on Triton or plain PyTorch). Install with `pip install --no-build-isolation -e .`: this script
imports the installed torch, and an isolated build would fetch another one.

The Triton kernels live in tiue/kernels/, an ordinary subpackage, so a checkout on PYTHONPATH
imports them as well as an installed copy does.
"""

from __future__ import annotations

import glob
import os
import warnings

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGES = find_packages(include=["tiue", "tiue.*"])
EXTENSION = "tiue._C"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _sources(*patterns: str) -> list[str]:
    # Relative paths: setuptools rejects absolute source paths in editable builds.
    found: list[str] = []
    for pattern in patterns:
        found += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    return found


def _cuda_decision(torch) -> tuple[bool, str]:
    from torch.utils.cpp_extension import CUDA_HOME

    if _flag("TIUE_SKIP_CUDA_BUILD"):
        return False, "TIUE_SKIP_CUDA_BUILD=1"
    if _flag("TIUE_FORCE_CUDA"):
        return True, "TIUE_FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a build without CUDA"
    if CUDA_HOME is None:
        return False, "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    return True, f"torch CUDA {torch.version.cuda}, nvcc under {CUDA_HOME}"


def _make_extension(with_cuda: bool):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cxx_flags = ["-O3", "-fopenmp-simd"]  # omp simd pragmas only: threads come from ATen
    cpu_sources = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
    if not with_cuda:
        return CppExtension(EXTENSION, cpu_sources, extra_compile_args={"cxx": cxx_flags})
    return CUDAExtension(
        EXTENSION,
        cpu_sources + _sources("csrc/cuda/*.cpp", "csrc/cuda/*.cu"),
        define_macros=[("TIUE_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
    )


def _extension_setup() -> dict:
    """ext_modules and cmdclass for setup(); empty when torch is not importable."""
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension
    except ImportError as error:
        warnings.warn(f"tiue: torch is not importable ({error}); installing without tiue._C")
        return {}

    with_cuda, why = _cuda_decision(torch)
    try:
        extension = _make_extension(with_cuda)
    except Exception as error:  # noqa: BLE001 - e.g. CUDA libraries not found
        if with_cuda and _flag("TIUE_FORCE_CUDA"):
            raise
        warnings.warn(f"tiue: cannot set up the CUDA build ({error}); building C++ only")
        with_cuda, why = False, f"CUDA setup failed: {error}"
        extension = _make_extension(with_cuda)
    print(f"tiue: building {EXTENSION}: C++ kernels{' and CUDA kernels' if with_cuda else ''} ({why})")

    class OptionalBuildExtension(BuildExtension):
        """Builds tiue._C; a failure warns and leaves a working pure-Python install.

        A failed CUDA build is retried as C++ only, unless TIUE_FORCE_CUDA=1 asked for CUDA.
        """

        def run(self) -> None:
            try:
                super().run()
                return
            except Exception as error:  # noqa: BLE001 - any compiler or toolchain failure
                if with_cuda and _flag("TIUE_FORCE_CUDA"):
                    raise
                failure = error
            if with_cuda:
                warnings.warn(
                    f"tiue: the CUDA build of {EXTENSION} failed ({failure}); "
                    "retrying with the C++ CPU kernels only"
                )
                self.extensions = [_make_extension(with_cuda=False)]
                try:
                    super().run()
                    return
                except Exception as error:  # noqa: BLE001
                    failure = error
            self.extensions = []  # nothing to install: the package works without tiue._C
            warnings.warn(
                f"tiue: building {EXTENSION} failed ({failure}); installed without it, so the "
                "ops use Triton or plain PyTorch. See docs/kernels.md to build it."
            )

    return {
        "ext_modules": [extension],
        "cmdclass": {"build_ext": OptionalBuildExtension},
    }


setup(
    packages=PACKAGES,
    **_extension_setup(),
)
