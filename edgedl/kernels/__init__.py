"""Numba kernels.

Importing any kernel module first installs :mod:`edgedl.kernels.cache_load` (cached kernels load without
Numba's full compiler initialization; a kernel that is not cached compiles as before) and
:mod:`edgedl.kernels.compile_notice` (a line on stderr when compiling keeps a run waiting).
"""
from .cache_load import install as _install_cache_load
from .compile_notice import install as _install_compile_notice

_install_cache_load()
_install_compile_notice()
