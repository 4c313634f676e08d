"""Build script for tiue.

The pure-Python package always installs, with the C++/CUDA sources (csrc/, installed as
tiue/csrc). When torch is importable here it also builds the compiled extension `tiue._C` with
torch.utils.cpp_extension (ninja when available):
- the C++ CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) always;
- the CUDA kernels (csrc/cuda/) when torch has CUDA and nvcc is found.
Sources, flags and the CUDA decision are defined once in tiue/build_spec.py, which the
first-use build (tiue/build.py) reads too.
Environment overrides:
- TIUE_SKIP_CUDA_BUILD=1: C++ only. TIUE_FORCE_CUDA=1: build the CUDA part even if torch or
  the environment do not look CUDA-capable, and fail the install if it does not build.
- TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0") and MAX_JOBS are read by torch.utils.cpp_extension.
A failed optional build prints a warning and installs the package without it. Without torch
here (pip's default isolated build) nothing is compiled now: tiue builds `tiue._C` from the
installed sources on first use (tiue/build.py). `pip install --no-build-isolation` builds it
now, against the installed torch.

The Triton kernels live in tiue/kernels/, an ordinary subpackage, so a checkout on PYTHONPATH
imports them as well as an installed copy does.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _load_build_spec():
    # By path: the package is not importable yet, and tiue/__init__ must not run here.
    path = os.path.join(ROOT, "tiue", "build_spec.py")
    spec = importlib.util.spec_from_file_location("_tiue_build_spec", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_spec = _load_build_spec()
EXTENSION = build_spec.EXTENSION
# csrc/ installs as tiue/csrc (sources and headers, not csrc/tests) for the first-use build.
SOURCE_PACKAGES = {"tiue.csrc": "csrc", "tiue.csrc.cpu": "csrc/cpu", "tiue.csrc.cuda": "csrc/cuda"}
PACKAGES = find_packages(include=["tiue", "tiue.*"]) + list(SOURCE_PACKAGES)


def _relative_sources(with_cuda: bool) -> list[str]:
    # Relative paths: setuptools rejects absolute source paths in editable builds.
    return [os.path.relpath(path, ROOT) for path in build_spec.sources(CSRC, with_cuda)]


def _cuda_decision(torch) -> tuple[bool, str]:
    from torch.utils.cpp_extension import CUDA_HOME

    return build_spec.cuda_decision(torch, CUDA_HOME)


def _make_extension(with_cuda: bool):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cxx_flags = list(build_spec.CXX_FLAGS)
    if not with_cuda:
        return CppExtension(EXTENSION, _relative_sources(False), extra_compile_args={"cxx": cxx_flags})
    return CUDAExtension(
        EXTENSION,
        _relative_sources(True),
        define_macros=[(build_spec.CUDA_MACRO, None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": list(build_spec.NVCC_FLAGS)},
    )


def _extension_setup() -> dict:
    """ext_modules and cmdclass for setup(); empty when torch is not importable."""
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension
    except ImportError as error:
        print(f"tiue: torch is not importable here ({error}); {EXTENSION} builds on first use")
        return {}

    with_cuda, why = _cuda_decision(torch)
    try:
        extension = _make_extension(with_cuda)
    except Exception as error:  # noqa: BLE001 - e.g. CUDA libraries not found
        if with_cuda and build_spec.flag("TIUE_FORCE_CUDA"):
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
                if with_cuda and build_spec.flag("TIUE_FORCE_CUDA"):
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
                f"tiue: building {EXTENSION} failed ({failure}); installed without it: tiue tries "
                "again on first use, else the ops use Triton or plain PyTorch. See docs/kernels.md."
            )

    return {
        "ext_modules": [extension],
        "cmdclass": {"build_ext": OptionalBuildExtension},
    }


setup(
    packages=PACKAGES,
    package_dir=SOURCE_PACKAGES,
    package_data={name: ["*.cpp", "*.h", "*.cu", "*.cuh"] for name in SOURCE_PACKAGES},
    **_extension_setup(),
)
