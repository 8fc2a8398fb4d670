"""Numba loops of the elementwise losses, written once and compiled per term.

Every loop walks the flattened input in chunks of ``CHUNK`` elements and handles
the chunk range [c0, c1) it is given (``_parallel.map_chunks`` splits the chunks
among threads); it accumulates each chunk in float64 and returns the per-chunk
sums, which the caller adds in chunk order, so the result does not depend on the
thread count.  Each element is checked against the term's domain in the same pass
(``bounds = (y_lo, y_hi, z_lo, z_hi)``; a value outside sets a bit of the returned
flags, NaN sets none).

The float64 accumulators use ``reassoc_add`` (an add that LLVM may reorder into
per-lane partial sums), so the loops vectorize while the inlined point functions
keep strict IEEE semantics.

Sample weights are one per row of ``m`` consecutive elements; how they are
looked up is fixed per compiled copy (none, one per element, or ``w[e // m]``)
so that the unweighted loops carry no weight logic at all.

``TermLoops`` compiles, for one term, a copy of each loop with the term's point
functions bound as globals (``_specialise``).  Each copy has its own name, so
Numba's on-disk cache (``cache=True``) keeps them apart; the name also carries a
hash of the point-function sources, because Numba's cache only watches the file
of the loop itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._term_variants import specialised
from . import fastmath, points
from ._parallel import map_chunks
from ._specialise import source_hash, specialise
from .fastmath import reassoc_add

# Measured here: inner loops over per-chunk slices (`ys = y[start:stop]`, index from
# 0) vectorize; indexing the whole array at `start + i`, `range(start, stop)`, an
# inner loop nested under a per-row loop, or a per-chunk helper function each made
# the loop 2-80x slower.
CHUNK = 1 << 14
CHECK_DOMAIN = True  # rebound per compiled copy (see TermLoops)
WEIGHTS = 0  # rebound per compiled copy: 0 none, 1 per element, 2 per row of m

_SOURCES_HASH = source_hash(points, fastmath)


# The compile-time switches CHECK_DOMAIN and WEIGHTS are globals of each compiled
# copy of a loop; the loop passes them to these helpers as arguments, because an
# inlined helper would read the globals of this module, not of the copy.
@njit(inline="always")
def _domain_flags(y, z, bounds, check_domain):
    if not check_domain:  # a term without domains: the check compiles away
        return 0
    bad_y = 1 if (y < bounds[0]) | (y > bounds[1]) else 0
    bad_z = 2 if (z < bounds[2]) | (z > bounds[3]) else 0
    return bad_y | bad_z


@njit(inline="always")
def _weight(w, start, i, m, weights):
    """The sample weight of flat element start + i (rows of m elements)."""
    if weights == 0:
        return 1.0
    if weights == 1:
        return w[start + i]
    return w[(start + i) // m]


def value_sum(y, z, w, m, p, bounds, c0, c1):
    """Per chunk of [c0, c1): Σ wᵢ·l(yₖ, zₖ); and the domain flags."""
    partial = np.zeros(c1 - c0)
    found = 0
    for cc in range(c1 - c0):
        start = (c0 + cc) * CHUNK
        ys, zs = y[start:start + CHUNK], z[start:start + CHUNK]
        acc = 0.0
        for i in range(zs.shape[0]):
            yy, zz = np.float64(ys[i]), np.float64(zs[i])
            found |= _domain_flags(yy, zz, bounds, CHECK_DOMAIN)
            acc = reassoc_add(acc, _weight(w, start, i, m, WEIGHTS) * value_grad(yy, zz, p)[0])
        partial[cc] = acc
    return partial, found


def value_sum_and_grad(y, z, w, m, p, bounds, scale, grad, c0, c1):
    """Per chunk: Σ wᵢ·l; writes grad = scale·wᵢ·l′ in the same pass."""
    partial = np.zeros(c1 - c0)
    found = 0
    for cc in range(c1 - c0):
        start = (c0 + cc) * CHUNK
        ys, zs, gs = y[start:start + CHUNK], z[start:start + CHUNK], grad[start:start + CHUNK]
        acc = 0.0
        for i in range(zs.shape[0]):
            yy, zz = np.float64(ys[i]), np.float64(zs[i])
            found |= _domain_flags(yy, zz, bounds, CHECK_DOMAIN)
            value, derivative = value_grad(yy, zz, p)
            wi = _weight(w, start, i, m, WEIGHTS)
            acc = reassoc_add(acc, wi * value)
            gs[i] = (scale * wi) * derivative
        partial[cc] = acc
    return partial, found


def grad_only(y, z, w, m, p, bounds, scale, grad, c0, c1):
    """Writes grad = scale·wᵢ·l′; returns the domain flags."""
    found = 0
    for cc in range(c1 - c0):
        start = (c0 + cc) * CHUNK
        ys, zs, gs = y[start:start + CHUNK], z[start:start + CHUNK], grad[start:start + CHUNK]
        for i in range(zs.shape[0]):
            yy, zz = np.float64(ys[i]), np.float64(zs[i])
            found |= _domain_flags(yy, zz, bounds, CHECK_DOMAIN)
            gs[i] = (scale * _weight(w, start, i, m, WEIGHTS)) * value_grad(yy, zz, p)[1]
    return found


def value_none(y, z, w, m, p, bounds, scale, out, c0, c1):
    """Writes out = scale·wᵢ·l per element; returns the domain flags."""
    found = 0
    for cc in range(c1 - c0):
        start = (c0 + cc) * CHUNK
        ys, zs, outs = y[start:start + CHUNK], z[start:start + CHUNK], out[start:start + CHUNK]
        for i in range(zs.shape[0]):
            yy, zz = np.float64(ys[i]), np.float64(zs[i])
            found |= _domain_flags(yy, zz, bounds, CHECK_DOMAIN)
            outs[i] = (scale * _weight(w, start, i, m, WEIGHTS)) * value_grad(yy, zz, p)[0]
    return found


def value_none_and_grad(y, z, w, m, p, bounds, scale, out, grad, c0, c1):
    """Writes out = scale·wᵢ·l and grad = scale·wᵢ·l′ per element; returns the flags."""
    found = 0
    for cc in range(c1 - c0):
        start = (c0 + cc) * CHUNK
        ys, zs = y[start:start + CHUNK], z[start:start + CHUNK]
        outs, gs = out[start:start + CHUNK], grad[start:start + CHUNK]
        for i in range(zs.shape[0]):
            yy, zz = np.float64(ys[i]), np.float64(zs[i])
            found |= _domain_flags(yy, zz, bounds, CHECK_DOMAIN)
            value, derivative = value_grad(yy, zz, p)
            s = scale * _weight(w, start, i, m, WEIGHTS)
            outs[i] = s * value
            gs[i] = s * derivative
    return found


def grad_and_hess(y, z, w, m, p, bounds, grad, hess, c0, c1):
    """Writes grad = wᵢ·l′ and hess = wᵢ·l″ per element; returns the domain flags."""
    found = 0
    for cc in range(c1 - c0):
        start = (c0 + cc) * CHUNK
        ys, zs = y[start:start + CHUNK], z[start:start + CHUNK]
        gs, hs = grad[start:start + CHUNK], hess[start:start + CHUNK]
        for i in range(zs.shape[0]):
            yy, zz = np.float64(ys[i]), np.float64(zs[i])
            found |= _domain_flags(yy, zz, bounds, CHECK_DOMAIN)
            derivative, second = grad_hess(yy, zz, p)
            wi = _weight(w, start, i, m, WEIGHTS)
            gs[i] = wi * derivative
            hs[i] = wi * second
    return found


_LOOPS = (value_sum, value_sum_and_grad, grad_only, value_none, value_none_and_grad, grad_and_hess)


class TermLoops:
    """The compiled loops of one term and weighting (lazily compiled by Numba on
    the first call with each signature)."""

    def __init__(self, term: str, check_domain: bool, weights: int):
        bound = {"value_grad": getattr(points, f"{term}_value_grad"), "CHECK_DOMAIN": check_domain,
                 "WEIGHTS": weights}
        hess = getattr(points, f"{term}_grad_hess", None)
        if hess is not None:
            bound["grad_hess"] = hess
        checked = "checked" if check_domain else "unchecked"
        tag = f"{term}__{checked}__w{weights}__{_SOURCES_HASH}"
        self.loops = {f.__name__: specialise(f, tag, bound)
                      for f in _LOOPS if f is not grad_and_hess or hess is not None}


_TERMS: dict[tuple, TermLoops] = {}


def loops_for(term: str, bounds: tuple, weights: int, params: tuple) -> dict:
    """The loops of ``term`` with parameters ``params`` (those of a cheaper special
    case, ``numbaloss._term_variants``, where they apply); ``weights``: 0 none, 1 one per
    element, 2 one per row."""
    term = specialised(term, params)
    check_domain = any(abs(b) != np.inf for b in bounds)
    key = (term, check_domain, weights)
    loops = _TERMS.get(key)
    if loops is None:
        loops = _TERMS[key] = TermLoops(term, check_domain, weights)
    return loops.loops


def run(loop, args: tuple, n: int):
    """Run ``loop`` over all chunks of n elements (threaded for large n).

    Returns (Σ of the per-chunk sums in chunk order, OR of the flags) for the
    summing loops, (0.0, flags) for the others.
    """
    n_chunks = (n + CHUNK - 1) // CHUNK
    results = map_chunks(loop, args, n_chunks, n)
    if isinstance(results[0], tuple):
        partial = results[0][0] if len(results) == 1 else np.concatenate([r[0] for r in results])
        flags = 0
        for r in results:
            flags |= r[1]
        return float(partial.sum()), flags
    flags = 0
    for r in results:
        flags |= r
    return 0.0, flags
