"""Build script: the package is declared in pyproject.toml; this file adds the
Cython extension compiled from ``_cext/`` (the fallback backend for machines
without Numba) when its sources are present."""

from __future__ import annotations

import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).parent


def cython_extensions():
    sources = sorted(str(p.relative_to(HERE)) for p in (HERE / "_cext").glob("*.pyx"))
    if not sources:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    extensions = [
        Extension(
            f"numbaloss._cext.{pathlib.Path(src).stem}",
            [src],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in sources
    ]
    return cythonize(extensions, language_level=3)


setup(ext_modules=cython_extensions())
