"""Runs pycuda's setup.py (in the current folder) with each extension's C++ sources compiled in
parallel. distutils compiles them one after another, and pycuda's shipped Boost.Python subset is
most of its build; on a lent GPU machine, whose minutes are few, that is minutes saved. For
tests/gpu/run_on_device.sh only: it reaches into distutils' compiler, which product code never does.
"""

from __future__ import annotations

import os
import runpy
import sys
from multiprocessing.pool import ThreadPool
from typing import Any

import setuptools  # noqa: F401  (makes `distutils` setuptools' own copy)
from setuptools._distutils import ccompiler


def _parallel_compile(self: Any, sources: list[str], output_dir: str | None = None,
                      macros: Any = None, include_dirs: Any = None, debug: bool = False,
                      extra_preargs: Any = None, extra_postargs: Any = None,
                      depends: Any = None) -> list[str]:
    macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
        output_dir, macros, include_dirs, sources, depends, extra_postargs)
    cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)

    def one(obj: str) -> None:
        src, ext = build[obj]
        self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

    with ThreadPool(os.cpu_count() or 4) as pool:
        pool.map(one, objects)
    return list(objects)


ccompiler.CCompiler.compile = _parallel_compile  # type: ignore[method-assign]
sys.argv = ["setup.py", *sys.argv[1:]]
runpy.run_path("setup.py", run_name="__main__")
