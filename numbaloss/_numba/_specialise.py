"""Compile one Python loop into several Numba functions that differ in the scalar
functions and constants they use (bound as globals).

Numba's on-disk cache names a function's entries after its qualified name, so
each copy gets a name of its own (``<loop>__<tag>``); otherwise the copies of one
loop would overwrite each other's cache.
"""

from __future__ import annotations

import hashlib
import pathlib
import types

from numba import njit


def source_hash(*modules) -> str:
    """A short hash of the source of ``modules``, for the names of the copies.

    Numba's cache only checks the file of the loop itself; putting the hash of the
    point functions' sources into the name makes an edit there recompile.
    """
    data = b"".join(pathlib.Path(m.__file__).read_bytes() for m in modules)
    return hashlib.sha1(data).hexdigest()[:10]


def specialise(loop, tag: str, bound: dict):
    """A Numba-compiled copy of ``loop`` whose globals include ``bound``."""
    name = f"{loop.__name__}__{tag}"
    namespace = dict(loop.__globals__)
    namespace.update(bound)
    fn = types.FunctionType(loop.__code__, namespace, name, loop.__defaults__)
    fn.__qualname__ = name
    fn.__module__ = loop.__module__
    fn.__doc__ = loop.__doc__
    # error_model="numpy": x/0 gives inf or nan as in NumPy instead of raising
    return njit(nogil=True, cache=True, error_model="numpy")(fn)
